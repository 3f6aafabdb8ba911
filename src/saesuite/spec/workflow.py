"""The workflow's plan from one validated config (no torch): the suite expanded once,
the evaluations, transfer checks and releases it implies, each rule's input files,
its typed job, and the final targets. rules/common.smk holds one of these."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

from saesuite.spec import jobs, make_jobs, paths
from saesuite.spec.checks import (
    Evaluation,
    TransferCheck,
    evaluations,
    finetuned_specs,
    require_chat_templates,
    transfer_checks,
)
from saesuite.spec.config import ConfigError
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.releases import folder_name, release_groups
from saesuite.spec.suite import (
    expand_spanning,
    expand_suite,
    has_dashboards,
    known_site_width,
    model_layers,
    n_chunks,
)


class Workflow:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.root = config["output_root"]
        # activation caches and checkpoints: large and regenerable (a shared scratch)
        self.scratch = config["scratch_root"] or self.root
        self.suite: list[Dictionary] = expand_suite(config)
        # one dictionary over many layers each (CLTs): their own train, evaluate
        # and release jobs, beside the per-layer suite
        self.spanning: list[Dictionary] = expand_spanning(config)
        self.trained = sorted({s.model for s in self.suite + self.spanning})
        self.evaluations: list[Evaluation] = evaluations(config, self.suite)
        self.checks: dict[str, TransferCheck] = {
            c.name: c for c in transfer_checks(config, self.suite)
        }
        require_chat_templates(config, list(self.checks.values()))
        # the base's SAEs fine-tuned on each check's target (transfer.finetune_share)
        self.finetuned: list[Dictionary] = finetuned_specs(
            config, self.suite, list(self.checks.values())
        )
        self.tuned = {c.finetuned: c for c in self.checks.values() if c.finetuned}
        for key in self.tuned:
            if key in config["models"]:
                raise ConfigError(
                    f"models.{key}: the name is taken by the fine-tuned SAEs of a "
                    "transfer check (transfer.finetune_share); rename the model"
                )

    @cached_property
    def releases(self) -> dict[str, jobs.ReleaseJob]:
        out = {}
        every = self.suite + self.spanning
        for repo, specs in release_groups(self.config, every).items():
            width = known_site_width(self.config, specs[0].model, specs[0].site)
            out[folder_name(repo)] = make_jobs.release_job(
                self.config, repo, specs, width
            )
        return out

    # -- what one job covers ----------------------------------------------------

    def site_specs(self, model: str, layer: int, kind: str) -> list[Dictionary]:
        """The dictionaries one train job trains (Dictionary.job `kind`: those
        reading and writing the same sites)."""
        return [
            s
            for s in self.suite
            if s.model == model and s.layer == layer and s.job == kind
        ]

    def layer_specs(self, model: str, layer: int) -> list[Dictionary]:
        """The dictionaries of `model` (or of a fine-tuned key) at `layer`."""
        return [
            s
            for s in self.suite + self.finetuned
            if s.model == model and s.layer == layer
        ]

    def train_families(self, model: str) -> list[tuple[int, str]]:
        """(layer, job) of each train job of the model (Dictionary.job)."""
        return sorted({(s.layer, s.job) for s in self.suite if s.model == model})

    def model_sites(self, model: str) -> list[tuple[int, str]]:
        """The sites the model's activation cache holds: what its dictionaries read
        and what they reconstruct or predict."""
        mine = [d for d in self.suite + self.spanning if d.model == model]
        return sorted({(x.layer, x.kind) for d in mine for x in (*d.reads, *d.writes)})

    def spanning_summaries(self, model: str | None = None) -> list[str]:
        """The train_clt jobs' outputs (of one model, or all)."""
        return [
            paths.spanning_summary(self.root, d.model, d.path)
            for d in self.spanning
            if model is None or d.model == model
        ]

    # -- input files --------------------------------------------------------------

    def chunk_indices(self) -> list[str]:
        return [f"{i:05d}" for i in range(n_chunks(self.config))]

    def chunk_files(self, model: str, kind: str) -> list[str]:
        return [paths.chunk(self.scratch, model, c)[kind] for c in self.chunk_indices()]

    def site_summaries(self, model: str | None = None) -> list[str]:
        sites = {
            (s.model, s.layer, s.job)
            for s in self.suite
            if model is None or s.model == model
        }
        return [paths.site_summary(self.root, m, L, k) for m, L, k in sorted(sites)]

    def layer_site_summaries(self, model: str, layer: int) -> list[str]:
        """What writes the layer's dictionaries: train jobs, or a finetune job."""
        if model in self.tuned:
            return [paths.finetune_summary(self.root, model, layer)]
        kinds = sorted({s.job for s in self.layer_specs(model, layer)})
        return [paths.site_summary(self.root, model, layer, k) for k in kinds]

    def finetune_inputs(self, key: str, layer: int) -> dict[str, Any]:
        """A finetune job's inputs: the base's trained sites at the layer, the
        target's model info, the corpus and the base's normalisation scalars."""
        c = self.tuned[key]
        return {
            "sites": self.layer_site_summaries(c.base, layer),
            "model": paths.model_info(self.root, c.target),
            "corpus": paths.corpus(self.root)["jsonl"],
            "normalization": paths.normalization(self.scratch, c.base),
        }

    def evaluation_layers(self, e: Evaluation) -> tuple[int, ...]:
        """The layers evaluation `e` covers: its own, or every layer of its SAEs."""
        return tuple(e.layers or model_layers(self.config, e.trained_on))

    def eval_layers(self, e: Evaluation) -> list[str]:
        """The summaries of the evaluate jobs that run evaluation `e`, a layer each."""
        return [
            paths.eval_pass(self.root, e.evaluated_on, e.data, L)
            for L in self.evaluation_layers(e)
        ]

    @cached_property
    def eval_passes(self) -> dict[tuple[str, str, int], list[Dictionary]]:
        """(model run through, data, layer) of each evaluate job → its dictionaries:
        those of every evaluation through that model on that data at that layer (PT
        SAEs, fine-tuned SAEs, an IT model's own), so that they share one clean pass."""
        out: dict[tuple[str, str, int], dict[Dictionary, None]] = {}
        for e in self.evaluations:
            for L in self.evaluation_layers(e):
                specs = out.setdefault((e.evaluated_on, e.data, L), {})
                specs.update(dict.fromkeys(self.layer_specs(e.trained_on, L)))
        return {k: list(v) for k, v in out.items()}

    def pass_site_summaries(self, lm: str, data: str, layer: int) -> list[str]:
        """What writes the dictionaries of an evaluate job: train and finetune jobs."""
        models = dict.fromkeys(s.model for s in self.eval_passes[(lm, data, layer)])
        return [f for m in models for f in self.layer_site_summaries(m, layer)]

    def model_eval_layers(self, model: str) -> list[str]:
        """A model's SAEs on its own held-out text, every layer."""
        return self.eval_layers(Evaluation(model, model, "text"))

    def dashboard_layers(self, model: str | None = None) -> list[str]:
        """The dashboards jobs' summaries: one per model × layer that
        `has_dashboards` (none unless dashboards.enabled)."""
        layers = sorted(
            {
                (s.model, s.layer)
                for s in self.suite
                if (model is None or s.model == model)
                and has_dashboards(self.config, s.layer)
            }
        )
        return [paths.dashboards_layer(self.root, m, L) for m, L in layers]

    def transfer_inputs(self, name: str) -> list[str]:
        return list(
            dict.fromkeys(
                f for e in self.checks[name].evaluations for f in self.eval_layers(e)
            )
        )

    def release_inputs(self, name: str) -> list[str]:
        job = self.releases[name]
        if job.spanning:  # a CLT repo: each CLT's own evaluation
            return [m.eval for m in job.members]
        out = [paths.eval_pass(self.root, job.model, "text", L) for L in job.layers]
        out += sorted(
            {
                paths.dashboards_layer(self.root, job.model, m.dictionary.layer)
                for m in job.members
                if m.dashboard
            }
        )
        return out

    # -- jobs -----------------------------------------------------------------------

    def train_params(self, model: str, layer: int, kind: str) -> dict[str, Any]:
        """The train job as the rule's param: without where the activations are
        (the rule's inputs say that), so moving the scratch does not rerun it."""
        job = make_jobs.train_job(self.config, self.suite, model, layer, kind).to_dict()
        return {k: v for k, v in job.items() if k not in jobs.TrainJob.LOCATION}

    def spanning_train_params(self, model: str, path: str) -> dict[str, Any]:
        """A CLT's train job as the rule's param, without where the activations
        are (as train_params)."""
        job = make_jobs.spanning_train_job(self.config, self.spanning, model, path)
        return {
            k: v for k, v in job.to_dict().items() if k not in jobs.TrainJob.LOCATION
        }

    def spanning_evals(self, model: str | None = None) -> list[str]:
        """The evaluate_clt jobs' outputs: each CLT on its model's held-out text."""
        return [
            paths.sae_eval(self.root, d.model, d.model, "text", d.path)
            for d in self.spanning
            if model is None or d.model == model
        ]

    def spanning_eval_params(self, model: str, path: str) -> dict[str, Any]:
        """A CLT's evaluate job: an EvalJob of its one member."""
        (d,) = [s for s in self.spanning if (s.model, s.path) == (model, path)]
        return make_jobs.eval_job(self.config, [d], model, "text", d.layer).to_dict()

    def eval_params(self, lm: str, data: str, layer: int) -> dict:
        specs = self.eval_passes[(lm, data, layer)]
        return make_jobs.eval_job(self.config, specs, lm, data, layer).to_dict()

    def finetune_params(self, key: str, layer: int) -> dict[str, Any]:
        """The finetune job as the rule's param, without where its inputs are."""
        c = self.tuned[key]
        job = make_jobs.finetune_job(
            self.config, self.suite, self.finetuned, key, c.base, c.target, layer
        ).to_dict()
        for t in job["trains"]:
            for k in jobs.TrainJob.LOCATION:
                t.pop(k)
        return {k: v for k, v in job.items() if k != "corpus"}

    def dashboard_params(self, model: str, layer: int) -> dict[str, Any]:
        return make_jobs.dashboard_job(self.config, self.suite, model, layer).to_dict()

    def rollouts_params(self, model: str) -> dict[str, Any]:
        return make_jobs.rollouts_job(self.config, model).to_dict()

    def release_params(self, name: str) -> dict[str, Any]:
        return self.releases[name].to_dict()

    def check_params(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(self.checks[name])

    def publish_params(self, name: str) -> dict[str, Any]:
        return make_jobs.publish_job(self.config, self.releases[name]).to_dict()

    # -- targets --------------------------------------------------------------------

    def final_outputs(self) -> list[str]:
        root = self.root
        out = self.site_summaries() + self.spanning_summaries()
        out += self.spanning_evals()
        # The cache itself is a target, so a deleted chunk is recomputed (only that
        # one: Snakemake skips jobs whose outputs exist, however old those after).
        out += [f for m in self.trained for f in self.chunk_files(m, "data")]
        out += [paths.eval_table(root, m)["csv"] for m in self.trained]
        out += list(
            dict.fromkeys(f for e in self.evaluations for f in self.eval_layers(e))
        )
        out += [paths.transfer_outputs(root, name)["plot"] for name in self.checks]
        out += [
            paths.report_dirs(root, m)[k]
            for m in self.trained
            for k in ("figures", "tables")
        ]
        out += [paths.release_manifest(root, name) for name in self.releases]
        out += self.dashboard_layers()
        return out

    def publish_targets(self) -> list[str]:
        upload = self.config["publish"]["upload"]
        return [paths.publish_record(self.root, r, upload) for r in self.releases]
