"""Typed jobs: what each compute rule hands to its package function.

Every job is a frozen dataclass built here, and only here, from the configuration and
the expanded suite (no torch). A rule passes `job.to_dict()` as a param (Snakemake
reruns a job whose params change) and its script reads it back with `from_dict`; a
multi-process trainer reads the same JSON from a file. What a job learns at run time
(the device, where its inputs are) is passed beside it or set with `located`, never
written into a config dict. A train job carries its own fingerprint, which a
checkpoint must match to be resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from saesuite.spec import paths
from saesuite.spec.config import SAESpec, config_hash, has_dashboards
from saesuite.spec.hashing import stable_hash
from saesuite.spec.paths import activation_identity
from saesuite.spec.sites import Site
from saesuite.spec.sizes import dictionary_bytes

# A dictionary's kinds: an SAE reconstructs the site it reads; a transcoder reads one
# site and predicts another (an MLP's input and output), a skip-transcoder with an
# affine skip connection too (Gemma Scope 2). Suite groups ask for transcoders
# (config: kind, skip); training, evaluation and the release layouts take all three
# (a model's transcoders go to one repo, {site} = transcoder: spec.releases).
KINDS = ("sae", "transcoder", "skip_transcoder")
TRANSCODERS = frozenset({"transcoder", "skip_transcoder"})


class _Json:
    """JSON both ways: `to_dict` for the rule's params, `from_dict` to read them back.
    `NESTED` names the fields that hold a tuple of another dataclass."""

    NESTED: dict[str, type] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        nested = {k: tuple(t(**x) for x in d[k]) for k, t in cls.NESTED.items()}
        return cls(**{**d, **nested})


@dataclass(frozen=True)
class DictionarySpec:
    """One dictionary of a train job: its kind, the site it reads and the site it
    reconstructs (equal for an SAE), its width, sparsity, token budget and folder."""

    kind: str
    input_site: str  # a Site name: layer_5.res
    output_site: str
    width: int
    penalty: str  # "l0" or "target_l0"
    value: float
    coefficient: float
    tokens: int
    path: str  # under <output_root>/<model>/saes/
    out_dir: str

    @classmethod
    def of(cls, spec: SAESpec, root: str) -> DictionarySpec:
        return cls(spec.kind, spec.input_site.name, spec.output_site.name, spec.width,
                   spec.penalty, spec.value, spec.coefficient, spec.tokens, spec.path,
                   paths.sae_dir(root, spec))  # fmt: skip

    @property
    def layer(self) -> int:
        return Site.parse(self.input_site).layer

    @property
    def site_kind(self) -> str:
        return Site.parse(self.input_site).kind


@dataclass(frozen=True)
class TrainJob(_Json):
    """Every dictionary of one (model, input site, output site), trained on the same
    batches. `manifest`, `normalization` and `checkpoint` say where the activations
    are; the rule sets them from its inputs (`located`), so moving the scratch
    filesystem changes neither the params nor the fingerprint."""

    NESTED = {"dictionaries": DictionarySpec}

    model: str
    input_site: str
    output_site: str
    seed: int
    shuffle_bucket: int
    train: dict[str, Any]
    identity: dict[str, Any]  # model, source, revision, activation-cache hash
    dictionaries: tuple[DictionarySpec, ...]
    manifest: str = ""
    normalization: str = ""
    checkpoint: str = ""
    config_hash: str = ""  # of the whole config; recorded, not fingerprinted
    group_bytes: float | None = None  # overrides the GPU's budget for groups (tests)

    LOCATION = ("manifest", "normalization", "checkpoint")

    @property
    def site(self) -> str:
        """The site the activation reader reads (the input site)."""
        return self.input_site

    @property
    def name(self) -> str:
        """layer_L.{family}: the input site for SAEs, layer_L.{kind} for transcoders
        (a layer's plain and skip-transcoders read and write the same sites but are
        two jobs, which must not share a checkpoint)."""
        kind = self.dictionaries[0].kind
        if kind == "sae":
            return self.input_site
        return f"layer_{Site.parse(self.input_site).layer}.{kind}"

    def located(self, manifest: str, normalization: str) -> TrainJob:
        """This job reading the cache at `manifest`, checkpointing beside it."""
        scratch = str(PurePosixPath(manifest).parent.parent.parent)
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
class EvalMember:
    """One dictionary of an evaluate job: where it is, where its JSON goes, and the
    identity its rows in the tables carry."""

    key: str  # unique in its job: <model>/<path under saes/> (a dashboard's: the path)
    dir: str
    out: str
    input_site: str
    output_site: str
    identity: dict[str, Any]


@dataclass(frozen=True)
class EvalJob(_Json):
    """Dictionaries of one layer, run through model `evaluated_on` on `data`
    ("text": its held-out split, "chat": its rollouts), sharing its clean passes:
    each member's identity names the model it was trained on (`model`)."""

    NESTED = {"members": EvalMember}

    evaluated_on: str
    data: str
    layer: int
    model_cfg: dict[str, Any]
    evaluate: dict[str, Any]
    members: tuple[EvalMember, ...]
    group_bytes: float | None = None  # overrides the GPU's budget for groups (tests)

    def evaluation(self, member: EvalMember) -> dict[str, str]:
        """What a member's rows in the tables say of its evaluation."""
        return {"trained_on": member.identity["model"],
                "evaluated_on": self.evaluated_on, "data": self.data}  # fmt: skip


@dataclass(frozen=True)
class DashboardJob(_Json):
    """Every dictionary of `model` at one layer: what its latents respond to on the
    model's held-out split (each member's `out` is its dashboard folder)."""

    NESTED = {"members": EvalMember}

    model: str
    layer: int
    model_cfg: dict[str, Any]
    dashboards: dict[str, Any]
    seed: int
    members: tuple[EvalMember, ...]


@dataclass(frozen=True)
class RolloutsJob(_Json):
    """Chat rollouts of one model for the transfer checks."""

    model: str
    model_cfg: dict[str, Any]
    context_size: int
    transfer: dict[str, Any]
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
        scratch = str(PurePosixPath(normalization).parent.parent.parent)
        trains = tuple(
            dataclasses.replace(t, normalization=normalization,
                                checkpoint=paths.checkpoint(scratch, t.model, t.name))
            for t in self.trains
        )  # fmt: skip
        return dataclasses.replace(self, trains=trains, corpus=corpus)


@dataclass(frozen=True)
class ReleaseMember:
    """One dictionary of a release: what it is, its trained folder, its evaluation."""

    spec: dict[str, Any]  # layer, site, width, penalty, value, path
    sae_dir: str
    eval: str
    n_bytes: int  # its float32 weights (what publishing sends)
    kind: str = "sae"
    input_site: str = ""  # Site names, as in DictionarySpec
    output_site: str = ""
    dashboard: str = ""  # its dashboard folder, when the release includes it


@dataclass(frozen=True)
class ReleaseJob(_Json):
    """One Hub repo's folder."""

    NESTED = {"members": ReleaseMember}

    repo: str
    layout: str
    model: str
    model_cfg: dict[str, Any]
    canonical_l0: float
    license: str
    data: dict[str, Any]
    seed: int
    train: dict[str, Any]
    members: tuple[ReleaseMember, ...]

    @property
    def layers(self) -> list[int]:
        return sorted({m.spec["layer"] for m in self.members})

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


def train_section(train: dict[str, Any], family: str) -> dict[str, Any]:
    """The train section one family's jobs run with: a transcoder's encoder starts at
    `transcoder_encoder_init_scale` where that is set, since it reads another site than
    its decoder writes and the SAE's reason for a small encoder (W_enc = W_decᵀ
    overshooting) does not carry over. The key itself is dropped, so a job's
    parameters hold only what shapes its dictionaries and the SAE jobs' stay as they
    were without it."""
    train = dict(train)
    scale = train.pop("transcoder_encoder_init_scale", None)
    if family in TRANSCODERS and scale is not None:
        train["encoder_init_scale"] = scale
    return train


def train_job(
    config: dict[str, Any], suite: list[SAESpec], model: str, layer: int, kind: str
) -> TrainJob:
    """The train job of one site's SAEs, or of one layer's transcoders of one kind
    (`kind`: a spec.sites.FAMILY_TITLES key). Only what shapes the dictionaries
    goes in."""
    root = config["output_root"]
    scratch = config.get("scratch_root") or root
    specs = [s for s in suite if s.model == model and s.layer == layer
             and s.family == kind]  # fmt: skip
    if not specs:
        raise ValueError(f"no dictionaries of {model} at layer {layer}, {kind}")
    m = config["models"][model]
    return TrainJob(
        model=model,
        input_site=specs[0].input_site.name,
        output_site=specs[0].output_site.name,
        seed=config["seed"],
        shuffle_bucket=config["activations"]["shuffle_bucket"],
        train=train_section(config["train"], kind),
        identity={
            "model": model,
            "source": m["source"],
            "revision": m["revision"],
            "activations": activation_identity(config, model)["hash"],
        },
        dictionaries=tuple(DictionarySpec.of(s, root) for s in specs),
    ).located(paths.manifest(scratch, model), paths.normalization(scratch, model))


def finetune_job(
    config: dict[str, Any], suite: list[SAESpec], finetuned: list[SAESpec],
    key: str, base: str, target: str, layer: int,
) -> FinetuneJob:  # fmt: skip
    """The fine-tuning of `base`'s dictionaries at one layer (`finetuned`: every
    fine-tuned SAESpec, spec.checks.finetuned_specs) on `target` under `key`, one
    train job per site family. The train section's λ warm-up is dropped (the states
    are sparse already) and b_dec kept (not re-initialised)."""
    root = config["output_root"]
    specs = [s for s in finetuned if s.model == key and s.layer == layer]
    if not specs:
        raise ValueError(f"no fine-tuned dictionaries {key} at layer {layer}")
    pt = {s.path: s for s in suite if s.model == base}
    m = config["models"][target]
    train = config["train"] | {"lambda_warmup_steps": 0, "b_dec_init": "zeros"}
    trains, inits = [], []
    for family in sorted({s.family for s in specs}):
        group = [s for s in specs if s.family == family]
        trains.append(TrainJob(
            model=key,
            input_site=group[0].input_site.name,
            output_site=group[0].output_site.name,
            seed=config["seed"],
            shuffle_bucket=config["activations"]["shuffle_bucket"],
            train=train_section(train, family),
            identity={"model": key, "base": base, "target": target,
                      "source": m["source"], "revision": m["revision"]},
            dictionaries=tuple(DictionarySpec.of(s, root) for s in group),
        ))  # fmt: skip
        inits.append(tuple(paths.sae_dir(root, pt[s.path]) for s in group))
    data = {k: config["data"][k] for k in ("context_size", "train_tokens",
                                           "eval_tokens")}  # fmt: skip
    return FinetuneJob(tuple(trains), base, target, m, data, tuple(inits))


def eval_job(
    config: dict[str, Any], specs: list[SAESpec], lm: str, data: str, layer: int
) -> EvalJob:
    """The dictionaries `specs` (of `layer`; trained on any model of lm's shape), run
    through `lm` on `data` (Workflow.eval_passes says which share a job)."""
    root = config["output_root"]
    if stray := [s.path for s in specs if s.layer != layer]:
        raise ValueError(f"evaluate job of layer {layer} given dictionaries {stray}")
    members = tuple(
        EvalMember(
            key=f"{s.model}/{s.path}",
            dir=paths.sae_dir(root, s),
            out=paths.sae_eval(root, s.model, lm, data, s.path),
            input_site=s.input_site.name,
            output_site=s.output_site.name,
            identity={
                "model": s.model,
                "layer": s.layer,
                "site": s.family,  # a transcoder's rows apart from the MLP's SAEs
                "width": s.width,
                "penalty": s.penalty,
                "value": s.value,
                "coefficient": s.coefficient,
                "train_tokens": s.tokens,
                "path": s.path,
            },  # fmt: skip
        )
        for s in specs
    )
    return EvalJob(lm, data, layer, config["models"][lm], config["evaluate"], members)


def dashboard_job(
    config: dict[str, Any], suite: list[SAESpec], model: str, layer: int
) -> DashboardJob:
    """Every dictionary of `model` at `layer`, for its dashboards."""
    root = config["output_root"]
    members = tuple(
        EvalMember(
            key=s.path,
            dir=paths.sae_dir(root, s),
            out=paths.dashboard_dir(root, model, s.path),
            input_site=s.input_site.name,
            output_site=s.output_site.name,
            identity={
                "model": model,
                "layer": layer,
                "site": s.family,
                "width": s.width,
                "path": s.path,
            },
        )  # fmt: skip
        for s in suite
        if s.model == model and s.layer == layer
    )
    return DashboardJob(model, layer, config["models"][model], config["dashboards"],
                        config["seed"], members)  # fmt: skip


def rollouts_job(config: dict[str, Any], model: str) -> RolloutsJob:
    return RolloutsJob(model, config["models"][model], config["data"]["context_size"],
                       config["transfer"], config["seed"])  # fmt: skip


def release_job(
    config: dict[str, Any], repo: str, specs: list[SAESpec], site_width: int
) -> ReleaseJob:
    """Everything the release rule needs for one repo; `site_width`: the d_in of the
    repo's site (for the bytes it sends)."""
    models = {s.model for s in specs}
    if len(models) != 1:
        raise ValueError(
            f"config key 'release.repo': '{config['release']['repo']}' puts SAEs of "
            f"models {sorted(models)} into one repo {repo}; include {{model}}"
        )
    model = models.pop()
    root = config["output_root"]
    rel = config["release"]
    members = tuple(
        ReleaseMember(
            spec={
                "layer": s.layer,
                "site": s.site,
                "width": s.width,
                "penalty": s.penalty,
                "value": s.value,
                "path": s.path,
                **({"kind": s.kind} if s.kind != "sae" else {}),
            },  # fmt: skip
            sae_dir=paths.sae_dir(root, s),
            eval=paths.sae_eval(root, model, model, "text", s.path),
            dashboard=(
                paths.dashboard_dir(root, model, s.path)
                if rel["dashboards"] and has_dashboards(config, s.layer)
                else ""
            ),  # fmt: skip
            n_bytes=dictionary_bytes(
                site_width, s.width, skip=s.kind == "skip_transcoder"
            ),  # fmt: skip
            kind=s.kind,
            input_site=s.input_site.name,
            output_site=s.output_site.name,
        )
        for s in sorted(specs)
    )
    return ReleaseJob(repo, rel["layout"], model, config["models"][model],
                      rel["canonical_l0"], rel["license"], config["data"],
                      config["seed"], config["train"], members)  # fmt: skip


def publish_job(config: dict[str, Any], release: ReleaseJob) -> PublishJob:
    pub = config["publish"]
    return PublishJob(
        repo_id=release.repo,
        **{k: pub[k] for k in ("upload", "private", "delete_extra", "revision")},
        message=f"saesuite: {release.repo} ({len(release.members)} SAEs of "
        f"{release.model}, config {config_hash(config)})",
    )
