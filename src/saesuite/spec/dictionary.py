"""A dictionary's identity, the one type that names it from the suite's expansion
through its jobs to its release entry, and the table of kinds (no torch).

`KINDS` is the only place a kind of dictionary is declared: which sites it reads and
writes at its layer, whether it has an affine skip connection, and which suite sites
it may take. Training, evaluation, release, cards and the plan ask a `Dictionary`
(`paired`, `skip`, `reads`, `writes`, `family`), not its kind's name.

One name per quantity from the config to the loss: a rung of the sparsity ladder is
`target_l0` (Gemma Scope 2's L0*, None for Gemma Scope 1's λ·L0 penalty) and
`lambda_` (λ of either penalty; the schema's `lambda`/`lambdas`, with the trailing
underscore because `lambda` is a Python keyword).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saesuite.spec.sites import SITE_NAMES, Site
from saesuite.spec.sparsity import sparsity_label


@dataclass(frozen=True)
class Kind:
    """How one kind of dictionary relates its sites at its layer."""

    name: str
    title: str  # in the report and model cards
    reads: str | None  # the site it reads at its layer; None: the suite group's site
    writes: str | None  # the site it reconstructs or predicts; None: the group's site
    saelens: str  # SAELens's architecture name (its cfg.json)
    skip: bool = False  # an affine skip connection (Gemma Scope 2's skip-transcoders)
    sites: tuple[str, ...] | None = None  # the suite sites it may take; None: any
    # `{site}` of its release repo and Gemma Scope 2's folder; None: the site's own
    release_site: str | None = None
    # one dictionary over the suite group's layers, reading `reads` and writing
    # `writes` at each of them (a cross-layer transcoder), not one per layer
    spans: bool = False

    def sites_of(self, layer: int, site: str) -> tuple[tuple[Site], tuple[Site]]:
        """(reads, writes) of this kind's dictionary for suite site `site`."""
        return (Site(layer, self.reads or site),), (Site(layer, self.writes or site),)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        # an SAE reconstructs the site it reads
        Kind("sae", "sparse autoencoder", None, None, "jumprelu"),
        # a transcoder reads an MLP's input (after its pre-norm) and predicts the
        # MLP's output (after its post-norm) at the same layer (Gemma Scope); plain
        # and skip-transcoders share one repo and folder (Gemma Scope 2's)
        Kind(
            "transcoder",
            "transcoder (MLP input → output)",
            "mlp_in",
            "mlp",
            "jumprelu_transcoder",
            sites=("mlp",),
            release_site="transcoder",
        ),
        Kind(
            "skip_transcoder",
            "skip-transcoder (MLP input → output)",
            "mlp_in",
            "mlp",
            "jumprelu_skip_transcoder",
            skip=True,
            sites=("mlp",),
            release_site="transcoder",
        ),
        # a cross-layer transcoder (Gemma Scope 2's CLTs): layer i's latents read
        # layer i's MLP input and predict the MLP outputs of every layer j ≥ i of its
        # span; SAELens loads one layer of its release as a transcoder
        Kind(
            "clt",
            "cross-layer transcoder (MLP inputs → later MLP outputs)",
            "mlp_in",
            "mlp",
            "jumprelu_transcoder",
            sites=("mlp",),
            release_site="clt",
            spans=True,
        ),
        # a weakly causal crosscoder (Gemma Scope 2's crosscoders; Anthropic's
        # definition): the latents of its k-th layer read that layer's residual
        # stream and reconstruct the residual streams of its layers k, k+1, …; the
        # same sparse decoder as a CLT's, over residual sites
        Kind(
            "crosscoder",
            "weakly causal crosscoder (residual streams of its layers)",
            "res",
            "res",
            "jumprelu",
            sites=("res",),
            release_site="crosscoder",
            spans=True,
        ),
    )
}


# A family of dictionaries at one layer (Dictionary.family), as the report names it:
# a site's SAEs, or a paired kind (its folder under saes/layer_L/).
FAMILY_TITLES = {
    **SITE_NAMES,
    **{k.name: k.title for k in KINDS.values() if k.reads is not None},
}


def paired_job(reads: list[str], writes: list[str]) -> str:
    """The train job (Dictionary.job) of the paired dictionaries that read and write
    these site kinds at one layer: "mlp_in_to_mlp"."""
    return "_to_".join("+".join(sites) for sites in (reads, writes))


# Every train job's name at a layer (the rules' `kind` wildcard): a site's SAEs, or
# the paired kinds reading and writing the same sites. A spanning kind's dictionary
# is a job of its own (rule train_clt, `Dictionary.path` its wildcard).
TRAIN_JOBS = dict(SITE_NAMES)
for _k in KINDS.values():
    if _k.reads is not None and _k.writes is not None and not _k.spans:
        _job = paired_job([_k.reads], [_k.writes])
        TRAIN_JOBS[_job] = " and ".join(filter(None, [TRAIN_JOBS.get(_job), _k.name]))


@dataclass(frozen=True)
class Dictionary:
    """One dictionary of the suite: its model (or a fine-tuned key), kind, the sites
    it reads and writes, width, sparsity rung and token budget; its folder under
    <output_root>/<model>/saes/ is `path`."""

    model: str
    kind: str  # a KINDS key
    reads: tuple[Site, ...]
    writes: tuple[Site, ...]
    width: int
    lambda_: float  # λ of the penalty (λ·L0, or the quadratic penalty's)
    target_l0: float | None  # L0* of Gemma Scope 2's quadratic penalty; None: λ·L0
    tokens: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown dictionary kind '{self.kind}' ({list(KINDS)})")
        k = KINDS[self.kind]
        if not self.reads or not self.writes:
            raise ValueError(f"a {self.kind} of {self.model} reads and writes no site")
        if k.spans:
            self._check_span(k)
            return
        site = self.writes[0].kind
        expected = k.sites_of(self.reads[0].layer, site)
        allowed = k.sites is None or site in k.sites
        if not allowed or (self.reads, self.writes) != expected:
            raise ValueError(
                f"a {self.kind} of {self.model} reads "
                f"{[s.name for s in self.reads]} and writes "
                f"{[s.name for s in self.writes]}: an SAE reconstructs the site it "
                "reads, a transcoder predicts one layer's MLP output from its input "
                "(mlp_in → mlp)"
            )

    def _check_span(self, k: Kind) -> None:
        layers = [s.layer for s in self.reads]
        want = (
            tuple(Site(L, k.reads) for L in layers),
            tuple(Site(L, k.writes) for L in layers),
        )
        if (
            len(layers) < 2
            or layers != sorted(set(layers))
            or (
                self.reads,
                self.writes,
            )
            != want
        ):
            raise ValueError(
                f"a {self.kind} of {self.model} reads "
                f"{[s.name for s in self.reads]} and writes "
                f"{[s.name for s in self.writes]}: it reads {k.reads} and writes "
                f"{k.writes} at each of two or more increasing layers"
            )

    @classmethod
    def of(
        cls,
        model: str,
        kind: str,
        layer: int,
        site: str,
        width: int,
        tokens: int,
        *,
        lambda_: float,
        target_l0: float | None = None,
    ) -> Dictionary:
        """The dictionary of `kind` for suite site `site` at `layer`."""
        if kind not in KINDS:
            raise ValueError(f"unknown dictionary kind '{kind}' ({list(KINDS)})")
        k = KINDS[kind]
        if k.spans:
            raise ValueError(
                f"a {kind} spans two or more layers, not layer {layer} alone "
                "(Dictionary.spanning)"
            )
        if k.sites is not None and site not in k.sites:
            raise ValueError(
                f"a {kind} of {model} at layer {layer} reads "
                f"{[s.name for s in k.sites_of(layer, site)[0]]}: its suite site "
                f"must be one of {list(k.sites)}, not '{site}'"
            )
        reads, writes = k.sites_of(layer, site)
        return cls(model, kind, reads, writes, width, lambda_, target_l0, tokens)

    @classmethod
    def spanning(
        cls,
        model: str,
        kind: str,
        layers: list[int],
        width: int,
        tokens: int,
        *,
        lambda_: float,
        target_l0: float | None = None,
    ) -> Dictionary:
        """The one dictionary of a spanning kind (a CLT) over `layers`."""
        k = KINDS[kind]
        if not k.spans or k.reads is None or k.writes is None:
            raise ValueError(f"a {kind} is one dictionary per layer, not a span")
        reads = tuple(Site(L, k.reads) for L in layers)
        writes = tuple(Site(L, k.writes) for L in layers)
        return cls(model, kind, reads, writes, width, lambda_, target_l0, tokens)

    # -- what it is ---------------------------------------------------------------

    @property
    def layer(self) -> int:
        """Its layer; a spanning dictionary's first."""
        return self.reads[0].layer

    @property
    def spans(self) -> bool:
        """Whether it is one dictionary over several layers (a CLT)."""
        return KINDS[self.kind].spans

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers it reads at (one, but for a spanning dictionary)."""
        return tuple(s.layer for s in self.reads)

    @property
    def span(self) -> str:
        """A spanning dictionary's layers in its path: "layers_0-17" when they are
        consecutive, else each ("layers_7_13_17_22", as Gemma Scope 2 names its
        crosscoders)."""
        a, b = self.layers[0], self.layers[-1]
        if list(self.layers) == list(range(a, b + 1)):
            return f"layers_{a}-{b}"
        return "layers_" + "_".join(map(str, self.layers))

    @property
    def site(self) -> str:
        """The suite site it belongs to: the one it writes."""
        return self.writes[0].kind

    @property
    def input_site(self) -> Site:
        """The one site it reads (every kind so far reads one)."""
        (s,) = self.reads
        return s

    @property
    def output_site(self) -> Site:
        (s,) = self.writes
        return s

    @property
    def paired(self) -> bool:
        """Whether it reads other sites than it writes (a transcoder)."""
        return self.reads != self.writes

    @property
    def skip(self) -> bool:
        return KINDS[self.kind].skip

    @property
    def release_site(self) -> str:
        """`{site}` of its release repo: its kind's, or its own site's."""
        return KINDS[self.kind].release_site or self.site

    @property
    def family(self) -> str:
        """Its folder at its layer and its rows' `site` in the tables: an SAE's site,
        or the kind of a paired or spanning dictionary (its train job: `job`)."""
        return self.kind if self.paired or self.spans else self.site

    @property
    def job(self) -> str:
        """What its train job covers at its layer, and the rules' `kind` wildcard:
        every dictionary that reads and writes its sites, trained on the same
        batches from one read of the cache. An SAE's site; for a paired dictionary
        the sites it reads and writes ("mlp_in_to_mlp": a layer's plain and
        skip-transcoders together)."""
        if self.spans:
            return self.kind
        if not self.paired:
            return self.site
        return paired_job([s.kind for s in self.reads], [s.kind for s in self.writes])

    @property
    def penalty(self) -> str:
        """ "target_l0" (Gemma Scope 2's quadratic penalty) or "l0" (λ·L0)."""
        return "l0" if self.target_l0 is None else "target_l0"

    @property
    def value(self) -> float:
        """The rung's defining number: L0* of the quadratic penalty, λ of λ·L0 (the
        evaluation tables' `value` column)."""
        return self.lambda_ if self.target_l0 is None else self.target_l0

    @property
    def label(self) -> str:
        return sparsity_label(self.penalty, self.value)

    @property
    def path(self) -> str:
        """Its folder under saes/: layer_L/<family>/width_W/<label>, a spanning
        dictionary's <kind>/<span>/width_W/<label> (as deep)."""
        where = (
            f"{self.kind}/{self.span}"
            if self.spans
            else f"layer_{self.layer}/{self.family}"
        )
        return f"{where}/width_{self.width}/{self.label}"

    def sort_key(self) -> tuple:
        return (
            self.model,
            self.layer,
            self.site,
            self.width,
            self.penalty,
            self.value,
            self.lambda_,
            self.tokens,
            self.kind,
        )

    def __lt__(self, other: Dictionary) -> bool:
        return self.sort_key() < other.sort_key()

    def record(self) -> dict[str, Any]:
        """Its identity in evaluation JSON and tables (`site`: its family, so a
        transcoder's rows stand apart from the MLP's SAEs)."""
        return {
            "model": self.model,
            "layer": self.layer,
            "site": self.family,
            "width": self.width,
            "penalty": self.penalty,
            "value": self.value,
            "coefficient": self.lambda_,
            "train_tokens": self.tokens,
            "path": self.path,
        }

    # -- JSON (a job's params) ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "kind": self.kind,
            "reads": [s.name for s in self.reads],
            "writes": [s.name for s in self.writes],
            "width": self.width,
            "lambda": self.lambda_,
            "target_l0": self.target_l0,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dictionary:
        return cls(
            d["model"],
            d["kind"],
            tuple(Site.parse(s) for s in d["reads"]),
            tuple(Site.parse(s) for s in d["writes"]),
            d["width"],
            d["lambda"],
            d["target_l0"],
            d["tokens"],
        )

    def replace(self, **changes: Any) -> Dictionary:
        return dataclasses.replace(self, **changes)
