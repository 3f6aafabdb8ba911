"""Typed jobs: what each compute rule hands to its package function.

Every job is a frozen dataclass, built only in `spec.make_jobs` from the configuration
and the expanded suite (no torch). A rule passes `job.to_dict()` as a param (Snakemake
reruns a job whose params change) and its script reads it back with `from_dict`; a
multi-process trainer reads the same JSON from a file. What a job learns at run time
(the device, where its inputs are) is passed beside it or set with `located`, never
written into a config dict. A train job carries its own fingerprint, which a
checkpoint must match to be resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saesuite.spec import paths
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.hashing import stable_hash
from saesuite.spec.sections import (
    DashboardsConfig,
    EvaluateConfig,
    TrainConfig,
    TransferConfig,
)


def _encode(value: Any) -> Any:
    """A job's field as JSON: a Dictionary by its own to_dict."""
    if isinstance(value, Dictionary):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


class _Json:
    """JSON both ways: `to_dict` for the rule's params, `from_dict` to read them back.
    `NESTED` names the fields that hold another type with a `from_dict`: a tuple of
    them (a JSON list) or one."""

    NESTED: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        nested = {
            k: tuple(t.from_dict(x) for x in d[k])
            if isinstance(d[k], list)
            else t.from_dict(d[k])
            for k, t in cls.NESTED.items()
        }
        return cls(**{**d, **nested})


@dataclass(frozen=True)
class TrainJob(_Json):
    """Every dictionary of one (model, sites read, sites written), trained on the same
    batches. `manifest`, `normalization` and `checkpoint` say where the activations
    are; the rule sets them from its inputs (`located`), so moving the scratch
    filesystem changes neither the params nor the fingerprint."""

    NESTED = {"dictionaries": Dictionary, "train": TrainConfig}

    model: str
    seed: int
    shuffle_bucket: int
    train: TrainConfig
    identity: dict[str, Any]  # model, source, revision, activation-cache hash
    dictionaries: tuple[Dictionary, ...]
    root: str  # output_root: each dictionary's folder is paths.sae_dir(root, d)
    manifest: str = ""
    normalization: str = ""
    checkpoint: str = ""
    config_hash: str = ""  # of the whole config; recorded, not fingerprinted
    group_bytes: float | None = None  # overrides the GPU's budget for groups (tests)

    LOCATION = ("manifest", "normalization", "checkpoint")

    def __post_init__(self) -> None:
        first = self.dictionaries[0]
        for d in self.dictionaries:
            if (d.reads, d.writes) != (first.reads, first.writes):
                raise ValueError(
                    f"train job of {self.model}: {d.path} is a {d.kind} reading "
                    f"{[s.name for s in d.reads]}, {first.path} a {first.kind} "
                    f"reading {[s.name for s in first.reads]}: a job trains "
                    "dictionaries that read and write the same sites"
                )

    @property
    def input_site(self) -> str:
        """The site the activation reader reads (a Site name)."""
        return self.dictionaries[0].input_site.name

    @property
    def output_site(self) -> str:
        """The site it reconstructs or predicts (equal to input_site for SAEs)."""
        return self.dictionaries[0].output_site.name

    @property
    def site(self) -> str:
        return self.input_site

    @property
    def name(self) -> str:
        """layer_L.{job} (Dictionary.job): the input site for SAEs, the sites read
        and written for paired dictionaries (a layer's plain and skip-transcoders,
        one job)."""
        d = self.dictionaries[0]
        if d.spans:  # one job per spanning dictionary (a CLT)
            return d.path.replace("/", ".")
        return f"layer_{d.layer}.{d.job}" if d.paired else self.input_site

    def out_dir(self, d: Dictionary) -> str:
        """Where dictionary `d` of this job writes its folder."""
        return paths.sae_dir(self.root, d)

    def located(self, manifest: str, normalization: str) -> TrainJob:
        """This job reading the cache at `manifest`, checkpointing beside it."""
        scratch = paths.scratch_of(manifest)
        ckpt = paths.checkpoint(scratch, self.model, self.name)
        return dataclasses.replace(
            self, manifest=manifest, normalization=normalization, checkpoint=ckpt
        )

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the job without where files
        are, the device budget or the whole config's hash (a change elsewhere in the
        config does not touch the dictionaries)."""
        skip = (*self.LOCATION, "group_bytes", "config_hash")
        return stable_hash({k: v for k, v in self.to_dict().items() if k not in skip})


@dataclass(frozen=True)
class EvalMember(_Json):
    """One dictionary of an evaluate or dashboards job: where it is and where its
    output goes."""

    NESTED = {"dictionary": Dictionary}

    key: str  # unique in its job: <model>/<path under saes/> (a dashboard's: the path)
    dir: str
    out: str
    dictionary: Dictionary

    @property
    def input_site(self) -> str:
        return self.dictionary.input_site.name

    @property
    def output_site(self) -> str:
        return self.dictionary.output_site.name

    @property
    def identity(self) -> dict[str, Any]:
        """What its rows in the tables say it is (Dictionary.record)."""
        return self.dictionary.record()


@dataclass(frozen=True)
class EvalJob(_Json):
    """Dictionaries of one layer, run through model `evaluated_on` on `data`
    ("text": its held-out split, "chat": its rollouts), sharing its clean passes:
    each member's identity names the model it was trained on (`model`)."""

    NESTED = {"members": EvalMember, "evaluate": EvaluateConfig}

    evaluated_on: str
    data: str
    layer: int
    model_cfg: dict[str, Any]
    evaluate: EvaluateConfig
    members: tuple[EvalMember, ...]
    group_bytes: float | None = None  # overrides the GPU's budget for groups (tests)

    def evaluation(self, member: EvalMember) -> dict[str, str]:
        """What a member's rows in the tables say of its evaluation."""
        trained_on = member.dictionary.model
        return {
            "trained_on": trained_on,
            "evaluated_on": self.evaluated_on,
            "data": self.data,
        }


@dataclass(frozen=True)
class DashboardJob(_Json):
    """Every dictionary of `model` at one layer: what its latents respond to on the
    model's held-out split (each member's `out` is its dashboard folder)."""

    NESTED = {"members": EvalMember, "dashboards": DashboardsConfig}

    model: str
    layer: int
    model_cfg: dict[str, Any]
    dashboards: DashboardsConfig
    seed: int
    members: tuple[EvalMember, ...]


@dataclass(frozen=True)
class RolloutsJob(_Json):
    """Chat rollouts of one model for the transfer checks."""

    NESTED = {"transfer": TransferConfig}

    model: str
    model_cfg: dict[str, Any]
    context_size: int
    transfer: TransferConfig
    seed: int


@dataclass(frozen=True)
class FinetuneJob(_Json):
    """Gemma Scope 2's IT SAEs for one layer: each of `trains` (one per site family,
    its dictionaries the fine-tuned ones, under the fine-tuned key) starts from the
    trained states in the matching `init_dirs` (the base's SAEs, in the same order)
    and trains on `target`'s activations of chat-formatted training text, extracted
    once for the layer and normalised by the base's scalars so the states carry on
    in their units. `corpus`, each train's normalisation and checkpoint are set from
    the rule's inputs (`located`)."""

    trains: tuple[TrainJob, ...]
    base: str
    target: str
    target_cfg: dict[str, Any]
    data: dict[str, Any]  # context_size, train_tokens, eval_tokens
    init_dirs: tuple[tuple[str, ...], ...]
    corpus: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneJob:
        trains = tuple(TrainJob.from_dict(t) for t in d["trains"])
        inits = tuple(tuple(x) for x in d["init_dirs"])
        return cls(**{**d, "trains": trains, "init_dirs": inits})

    def located(self, corpus: str, normalization: str) -> FinetuneJob:
        """This job reading `corpus` and the base's scalars at `normalization`,
        checkpointing in the scratch that holds them (as TrainJob.located does)."""
        scratch = paths.scratch_of(normalization)
        trains = tuple(
            dataclasses.replace(
                t,
                normalization=normalization,
                checkpoint=paths.checkpoint(scratch, t.model, t.name),
            )
            for t in self.trains
        )
        return dataclasses.replace(self, trains=trains, corpus=corpus)


@dataclass(frozen=True)
class ReleaseMember(_Json):
    """One dictionary of a release: what it is, its trained folder, its evaluation."""

    NESTED = {"dictionary": Dictionary}

    dictionary: Dictionary
    sae_dir: str
    eval: str
    n_bytes: int  # its float32 weights (what publishing sends)
    dashboard: str = ""  # its dashboard folder, when the release includes it


@dataclass(frozen=True)
class ReleaseJob(_Json):
    """One Hub repo's folder."""

    NESTED = {"members": ReleaseMember, "train": TrainConfig}

    repo: str
    layout: str
    model: str
    model_cfg: dict[str, Any]
    canonical_l0: float
    license: str
    data: dict[str, Any]
    seed: int
    train: TrainConfig
    members: tuple[ReleaseMember, ...]

    @property
    def layers(self) -> list[int]:
        return sorted({m.dictionary.layer for m in self.members})

    @property
    def spanning(self) -> bool:
        """A repo of cross-layer dictionaries (release.clt_release writes it)."""
        return self.members[0].dictionary.spans

    @property
    def n_bytes(self) -> int:
        """float32 W_enc and W_dec of every dictionary (what publishing sends)."""
        return sum(m.n_bytes for m in self.members)


@dataclass(frozen=True)
class PublishJob(_Json):
    """Plan or upload one release folder to its Hub repo."""

    repo_id: str
    upload: bool
    private: bool
    delete_extra: bool
    revision: str | None
    message: str
