"""Where every artefact of a run lives, relative to `output_root`. The rules
(rules/common.smk), the CLI and the tests all take paths from here."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from saesuite.spec.dictionary import Dictionary
from saesuite.spec.hashing import stable_hash
from saesuite.spec.suite import model_sites, seqs_per_chunk

CHARS_PER_TOKEN_BUDGET = 10  # corpus text kept per needed token: ~2.5× typical BPE


RUN_LOCK = ".saesuite.lock"  # in each root a run writes: one run at a time (spec.lock)


def run_lock(root: str) -> Path:
    return Path(root) / RUN_LOCK


def corpus(root: str) -> dict[str, str]:
    return {
        "jsonl": f"{root}/corpus/corpus.jsonl",
        "info": f"{root}/corpus/corpus.json",
    }


def model_info(root: str, model: str) -> str:
    return f"{root}/{model}/model.json"


def tokens(root: str, model: str) -> dict[str, str]:
    base = f"{root}/{model}/tokens"
    return {
        "train": f"{base}/train.safetensors",
        "eval": f"{base}/eval.safetensors",
        "info": f"{base}/tokens.json",
    }


def chunk(root: str, model: str, index: int | str) -> dict[str, str]:
    idx = index if isinstance(index, str) else f"{index:05d}"
    base = f"{root}/{model}/activations/chunk_{idx}"
    return {"data": f"{base}.safetensors", "info": f"{base}.json"}


def manifest(root: str, model: str) -> str:
    return f"{root}/{model}/activations/manifest.json"


def normalization(root: str, model: str) -> str:
    return f"{root}/{model}/activations/normalization.json"


def scratch_of(activation_file: str) -> str:
    """The scratch root that holds a model's `manifest` or `normalization` file
    (<root>/<model>/activations/<file>): where its checkpoints go too."""
    return str(PurePath(activation_file).parents[2])


def activation_identity(config: dict[str, Any], model: str) -> dict[str, Any]:
    """What determines a model's activation cache; its hash is stored in every chunk."""
    ident = {
        "model": model,
        "model_config": config["models"][model],
        "data": config["data"],
        "seed": config["seed"],
        "dtype": config["activations"]["dtype"],
        "seqs_per_chunk": seqs_per_chunk(config),
        "sites": [s.name for s in model_sites(config, model)],
    }
    return {**ident, "hash": stable_hash(ident)}


def corpus_chars(config: dict[str, Any]) -> int:
    data = config["data"]
    return (data["train_tokens"] + data["eval_tokens"]) * CHARS_PER_TOKEN_BUDGET


def sae_dir(root: str, d: Dictionary) -> str:
    return f"{root}/{d.model}/saes/{d.path}"


# The files of one trained dictionary's folder (sae_dir).
SAE_FILES = {
    "weights": "sae.safetensors",  # on raw activations, normalisation folded in
    "state": "train_state.safetensors",  # the parameters as trained (on x / C)
    "info": "sae.json",  # everything to reproduce it
    "log": "train_log.jsonl",  # one line per logged step
}


def sae_file(sae_dir: str | PurePath, kind: str) -> Path:
    """One file of a trained dictionary's folder: a key of SAE_FILES."""
    return Path(sae_dir) / SAE_FILES[kind]


def sae_dir_beside(site_summary_path: str | PurePath, sae_path: str) -> Path:
    """A dictionary's folder from its train job's summary (`site_summary`) and its
    path under saes/ (Dictionary.path)."""
    return Path(site_summary_path).parents[2] / sae_path


def results_of(sae_dir_path: str | PurePath) -> Path:
    """The output root a trained dictionary's folder (`sae_dir`) lies in:
    <root>/<model>/saes/layer_L/<family>/width_W/<label>."""
    return Path(sae_dir_path).parents[5]


# What a run builds, by kind, as globs under its output root (`saesuite compare`):
# logs, Snakemake's benchmark files, the model cache and locks are left out, since
# they hold times and host paths, not results.
ARTEFACTS = {
    "corpus": ("corpus/corpus.jsonl",),
    "tokens and rollouts": ("*/tokens/*.safetensors", "*/rollouts/*.safetensors"),
    "activation chunks": ("*/activations/chunk_*.safetensors",),
    "normalisation": ("*/activations/normalization.json",),
    "dictionary weights": (f"*/saes/**/{SAE_FILES['weights']}",),
    "training states": (f"*/saes/**/{SAE_FILES['state']}",),
    "training logs": (f"*/saes/**/{SAE_FILES['log']}",),
    "dictionary records": (f"*/saes/**/{SAE_FILES['info']}",),
    "evaluations": ("*/eval/*/*/**/*.json", "*/eval/*/*/**/*.frequencies.safetensors"),
    "evaluation tables": ("*/eval/table.csv", "transfer/*/table.csv"),
    "dashboards": ("*/dashboards/**/*",),
    "release folders": ("release/**/*",),
}


# Each release layout's weights file, in every dictionary's folder (saesuite.release)
RELEASE_WEIGHTS = {
    "gemma-scope-2": "params.safetensors",
    "gemma-scope": "params.npz",
    "saelens": "sae_weights.safetensors",
}


def site_summary(root: str, model: str, layer: int | str, kind: str) -> str:
    return f"{root}/{model}/saes/layer_{layer}/{kind}/site.json"


def spanning_summary(root: str, model: str, sae_path: str) -> str:
    """Rule train_clt's output: a spanning dictionary's (a CLT's) record, written
    after its weights (`sae_path`: Dictionary.path)."""
    return f"{root}/{model}/saes/{sae_path}/{SAE_FILES['info']}"


def finetune_summary(root: str, key: str, layer: int | str) -> str:
    """A finetune job's summary: the SAEs of one layer it wrote under `key`
    (spec.checks.finetuned_key)."""
    return f"{root}/{key}/saes/layer_{layer}/finetune.json"


def checkpoint(root: str, model: str, job: str) -> str:
    """A train job's checkpoint; `job` is TrainJob.name (one per job)."""
    return f"{root}/{model}/checkpoints/{job}.pt"


def eval_dir(root: str, sae_model: str, lm: str, data: str) -> str:
    """Evaluations of `sae_model`'s SAEs run through model `lm` on `data` ("text":
    lm's held-out split, "chat": lm's rollouts)."""
    return f"{root}/{sae_model}/eval/{lm}/{data}"


def eval_pass(root: str, lm: str, data: str, layer: int | str) -> str:
    """One evaluate job's summary: every dictionary run through model `lm` on `data`
    at `layer`, whatever model each was trained on (they share the job's clean
    passes); each entry names its `trained_on` and its own JSON (`sae_eval`)."""
    return f"{root}/{lm}/eval_passes/{data}/layer_{layer}.json"


def sae_eval(root: str, sae_model: str, lm: str, data: str, sae_path: str) -> str:
    """One SAE's evaluation JSON (`sae_path` as in Dictionary.path); its per-latent
    frequencies sit beside it (`frequencies`)."""
    return f"{eval_dir(root, sae_model, lm, data)}/{sae_path}.json"


def dashboards_layer(root: str, model: str, layer: int | str) -> str:
    """The summary of one layer's dashboards job, written after its folders."""
    return f"{root}/{model}/dashboards/layer_{layer}.json"


def dashboard_dir(root: str, model: str, sae_path: str) -> str:
    """One dictionary's dashboard folder (saesuite.eval.dashboards)."""
    return f"{root}/{model}/dashboards/{sae_path}"


def frequencies(sae_eval_json: str | PurePath) -> Path:
    """The per-latent firing frequencies beside an SAE's evaluation JSON."""
    return Path(sae_eval_json).with_suffix(".frequencies.safetensors")


def done_marker(checkpoint_path: str | PurePath) -> Path:
    """The dictionaries a train job finished, beside its checkpoint (for a retry)."""
    p = Path(checkpoint_path)
    return p.with_name(f"{p.stem}.done.json")


def eval_table(root: str, model: str) -> dict[str, str]:
    base = f"{root}/{model}/eval/table"
    return {"csv": f"{base}.csv", "parquet": f"{base}.parquet"}


def rollouts(root: str, model: str) -> dict[str, str]:
    base = f"{root}/{model}/rollouts/rollouts"
    return {"data": f"{base}.safetensors", "info": f"{base}.json"}


def eval_data(root: str, lm: str, data: str) -> str:
    return tokens(root, lm)["eval"] if data == "text" else rollouts(root, lm)["data"]


def transfer_outputs(root: str, name: str) -> dict[str, str]:
    base = f"{root}/transfer/{name}"
    return {
        "csv": f"{base}/table.csv",
        "parquet": f"{base}/table.parquet",
        "html": f"{base}/table.html",
        "plot": f"{base}/transfer.png",
        "svg": f"{base}/transfer.svg",
    }


def report_dirs(root: str, model: str) -> dict[str, str]:
    """The report's figures (PNG + SVG per site) and tables of one model's SAEs."""
    return {
        "figures": f"{root}/{model}/report/figures",
        "tables": f"{root}/{model}/report/tables",
    }


RELEASE_MANIFEST = "release_manifest.json"  # written last: the folder is complete


def release_dir(root: str, name: str) -> str:
    """A release folder: the Hub repo `name` (org--repo) as it will be uploaded."""
    return f"{root}/release/{name}"


def release_manifest(root: str, name: str) -> str:
    """The release rule's output: a folder without its manifest is not finished (a
    directory output would look finished however empty it is)."""
    return f"{release_dir(root, name)}/{RELEASE_MANIFEST}"


def publish_record(root: str, name: str, upload: bool) -> str:
    """What rule publish did for one release: its plan (dry-run) or upload record."""
    return f"{root}/publish/{name}.{'upload' if upload else 'plan'}.json"
