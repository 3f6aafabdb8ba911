"""The typed jobs built from the configuration and the expanded suite (no torch):
the only place a job is made. Workflow (the rules' params) and the benchmarks that
rerun a rule's job call these."""

from __future__ import annotations

from typing import Any

from saesuite.spec import paths
from saesuite.spec.config import config_hash
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.jobs import (
    DashboardJob,
    EvalJob,
    EvalMember,
    FinetuneJob,
    PublishJob,
    ReleaseJob,
    ReleaseMember,
    RolloutsJob,
    TrainJob,
)
from saesuite.spec.paths import activation_identity
from saesuite.spec.sections import (
    DashboardsConfig,
    EvaluateConfig,
    TrainConfig,
    TransferConfig,
)
from saesuite.spec.sizes import clt_params, dictionary_bytes
from saesuite.spec.suite import has_dashboards


def train_section(train: TrainConfig, d: Dictionary) -> TrainConfig:
    """The train section dictionary `d`'s job runs with: a paired or spanning
    dictionary's encoder starts at `transcoder_encoder_init_scale` where that is
    set, since it reads another site than its decoder writes (or, spanning, is drawn
    apart from its decoder) and the SAE's reason for a small encoder (W_enc = W_decᵀ
    overshooting) does not carry over. The key itself is
    dropped, so a job's parameters hold only what shapes its dictionaries and the SAE
    jobs' stay as they were without it."""
    scale = train.transcoder_encoder_init_scale
    if (d.paired or d.spans) and scale is not None:
        train = train.replace(encoder_init_scale=scale)
    return train.replace(transcoder_encoder_init_scale=None)


def train_job(
    config: dict[str, Any],
    suite: list[Dictionary],
    model: str,
    layer: int,
    job: str,
) -> TrainJob:
    """The train job of one site's SAEs, or of one layer's paired dictionaries that
    read and write the same sites (`job`: Dictionary.job). Only what shapes the
    dictionaries goes in."""
    specs = [d for d in suite if (d.model, d.layer, d.job) == (model, layer, job)]
    if not specs:
        raise ValueError(f"no dictionaries of {model} at layer {layer}, {job}")
    return _cache_train_job(config, model, specs)


def spanning_train_job(
    config: dict[str, Any], spanning: list[Dictionary], model: str, path: str
) -> TrainJob:
    """The train job of one spanning dictionary (a CLT, a crosscoder) of `model`, by
    its path (Dictionary.path): itself alone, over every site it reads and writes."""
    specs = [d for d in spanning if (d.model, d.path) == (model, path)]
    if not specs:
        raise ValueError(f"no cross-layer dictionary {path} of {model}")
    return _cache_train_job(config, model, specs)


def _cache_train_job(
    config: dict[str, Any], model: str, specs: list[Dictionary]
) -> TrainJob:
    """The train job of `specs` from `model`'s activation cache."""
    root = config["output_root"]
    scratch = config.get("scratch_root") or root
    m = config["models"][model]
    return TrainJob(
        model=model,
        seed=config["seed"],
        shuffle_bucket=config["activations"]["shuffle_bucket"],
        train=train_section(TrainConfig.from_dict(config["train"]), specs[0]),
        identity={
            "model": model,
            "source": m["source"],
            "revision": m["revision"],
            "activations": activation_identity(config, model)["hash"],
        },
        dictionaries=tuple(specs),
        root=root,
    ).located(paths.manifest(scratch, model), paths.normalization(scratch, model))


def finetune_job(
    config: dict[str, Any],
    suite: list[Dictionary],
    finetuned: list[Dictionary],
    key: str,
    base: str,
    target: str,
    layer: int,
) -> FinetuneJob:
    """The fine-tuning of `base`'s dictionaries at one layer (`finetuned`: every
    fine-tuned Dictionary, spec.checks.finetuned_specs) on `target` under `key`, one
    train job per Dictionary.job. The train section's λ warm-up is dropped (the
    states are sparse already), b_dec kept (not re-initialised) and the lr scaled
    by transfer.finetune_lr_scale."""
    root = config["output_root"]
    specs = [d for d in finetuned if d.model == key and d.layer == layer]
    if not specs:
        raise ValueError(f"no fine-tuned dictionaries {key} at layer {layer}")
    pt = {d.path: d for d in suite if d.model == base}
    m = config["models"][target]
    train = TrainConfig.from_dict(config["train"])
    lr = train.lr * TransferConfig.from_dict(config["transfer"]).finetune_lr_scale
    train = train.replace(lambda_warmup_steps=0, b_dec_init="zeros", lr=lr)
    identity = {
        "model": key,
        "base": base,
        "target": target,
        "source": m["source"],
        "revision": m["revision"],
    }
    trains, inits = [], []
    for job in sorted({d.job for d in specs}):
        group = [d for d in specs if d.job == job]
        trains.append(
            TrainJob(
                model=key,
                seed=config["seed"],
                shuffle_bucket=config["activations"]["shuffle_bucket"],
                train=train_section(train, group[0]),
                identity=identity,
                dictionaries=tuple(group),
                root=root,
            )
        )
        inits.append(tuple(paths.sae_dir(root, pt[d.path]) for d in group))
    keys = ("context_size", "train_tokens", "eval_tokens")
    data = {k: config["data"][k] for k in keys}
    return FinetuneJob(tuple(trains), base, target, m, data, tuple(inits))


def eval_job(
    config: dict[str, Any], specs: list[Dictionary], lm: str, data: str, layer: int
) -> EvalJob:
    """The dictionaries `specs` (of `layer`; trained on any model of lm's shape), run
    through `lm` on `data` (Workflow.eval_passes says which share a job)."""
    root = config["output_root"]
    if stray := [d.path for d in specs if d.layer != layer]:
        raise ValueError(f"evaluate job of layer {layer} given dictionaries {stray}")
    members = tuple(
        EvalMember(
            key=f"{d.model}/{d.path}",
            dir=paths.sae_dir(root, d),
            out=paths.sae_eval(root, d.model, lm, data, d.path),
            dictionary=d,
        )
        for d in specs
    )
    ev = EvaluateConfig.from_dict(config["evaluate"])
    return EvalJob(lm, data, layer, config["models"][lm], ev, members)


def dashboard_job(
    config: dict[str, Any], suite: list[Dictionary], model: str, layer: int
) -> DashboardJob:
    """Every dictionary of `model` at `layer`, for its dashboards."""
    root = config["output_root"]
    members = tuple(
        EvalMember(
            key=d.path,
            dir=paths.sae_dir(root, d),
            out=paths.dashboard_dir(root, model, d.path),
            dictionary=d,
        )
        for d in suite
        if d.model == model and d.layer == layer
    )
    return DashboardJob(
        model,
        layer,
        config["models"][model],
        DashboardsConfig.from_dict(config["dashboards"]),
        config["seed"],
        members,
    )


def rollouts_job(config: dict[str, Any], model: str) -> RolloutsJob:
    return RolloutsJob(
        model,
        config["models"][model],
        config["data"]["context_size"],
        TransferConfig.from_dict(config["transfer"]),
        config["seed"],
    )


def member_bytes(d: Dictionary, site_width: int) -> int:
    """The float32 weights of one released dictionary (what publishing sends)."""
    if d.spans:
        return 4 * clt_params(len(d.layers), site_width, site_width, d.width)
    return dictionary_bytes(site_width, d.width, skip=d.skip)


def release_job(
    config: dict[str, Any], repo: str, specs: list[Dictionary], site_width: int
) -> ReleaseJob:
    """Everything the release rule needs for one repo; `site_width`: the d_in of the
    repo's site (for the bytes it sends)."""
    models = {d.model for d in specs}
    if len(models) != 1:
        raise ValueError(
            f"config key 'release.repo': '{config['release']['repo']}' puts SAEs of "
            f"models {sorted(models)} into one repo {repo}; include {{model}}"
        )
    model = models.pop()
    root = config["output_root"]
    rel = config["release"]

    def dashboard(d: Dictionary) -> str:
        if rel["dashboards"] and has_dashboards(config, d.layer):
            return paths.dashboard_dir(root, model, d.path)
        return ""

    members = tuple(
        ReleaseMember(
            dictionary=d,
            sae_dir=paths.sae_dir(root, d),
            eval=paths.sae_eval(root, model, model, "text", d.path),
            n_bytes=member_bytes(d, site_width),
            dashboard=dashboard(d),
        )
        for d in sorted(specs)
    )
    return ReleaseJob(
        repo,
        rel["layout"],
        model,
        config["models"][model],
        rel["canonical_l0"],
        rel["license"],
        config["data"],
        config["seed"],
        TrainConfig.from_dict(config["train"]),
        members,
    )


def publish_job(config: dict[str, Any], release: ReleaseJob) -> PublishJob:
    pub = config["publish"]
    return PublishJob(
        repo_id=release.repo,
        **{k: pub[k] for k in ("upload", "private", "delete_extra", "revision")},
        message=f"saesuite: {release.repo} ({len(release.members)} SAEs of "
        f"{release.model}, config {config_hash(config)})",
    )
