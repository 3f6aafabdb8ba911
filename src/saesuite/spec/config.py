"""Configuration: validation against config/schema.yaml, semantic checks, and the
suite expansion (config → the list of SAEs and the sites each model must cache).

rules/common.smk and `load_config` (tests, the CLI, benchmarks) both run
`validate_config`. Nothing here imports torch,
so planning a suite stays fast.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from saesuite.spec.dictionary import KINDS, Dictionary
from saesuite.spec.hashing import stable_hash
from saesuite.spec.known_models import known_name, known_shape
from saesuite.spec.prompts import load_prompts
from saesuite.spec.sites import Site

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/saesuite/spec/config.py
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


# Named train sections over the schema's defaults (`train.recipe`); the keys a config
# sets win. The numbers that chose "saesuite" are in BENCHMARKS.md ("SAE quality per
# token against SAELens", 2026-12-02): on sae_lens.synthetic at 4M samples MCC 0.782,
# F1 0.579, no dead latent, against Gemma Scope 1's recipe 0.548, 0.113, 521 dead and
# SAELens's 0.752, 0.531, 270 dead; on the default run's layer 9 residual FVU 0.362
# against 0.393 and 246 dead latents of 4096 against 3,249. Its dead window (10k
# tokens) was measured at the default run's scale (300k tokens per SAE) only; its
# transcoders' encoder scale 1 (against 0.1) took the default run's four transcoders
# from 170–903 dead latents to 0–116, FVU lower at all 8 (BENCHMARKS.md, 2026-12-03).
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "gemma-scope-1": {},
    "gemma-scope-2": {
        "frequency_coefficient": 1.0,
        "max_frequency": 0.1,
        "matryoshka_fractions": [0.0625, 0.25],
    },
    "saesuite": {
        "decoder_norm": "free",
        "decoder_init_norm": 0.1,
        "encoder_init_scale": 0.1,
        "transcoder_encoder_init_scale": 1.0,
        "lr_warmup_steps": 0,
        "lambda_warmup_steps": 0,
        "pre_act_coefficient": 1.0e-3,
        "pre_act_window_tokens": 10_000,
    },
}


def parse_settings(text: str) -> dict[str, Any]:
    """Command-line settings "k=v,k2=v2" as {k: v, …}, each value as YAML reads it
    but "3e-4" a float (YAML 1.1 reads it as a string); the benchmarks' --try."""

    def value(v: str) -> Any:
        v = yaml.safe_load(v)
        try:
            return float(v) if isinstance(v, str) else v
        except ValueError:
            return v

    return {k: value(v) for k, v in (kv.split("=", 1) for kv in text.split(","))}


def apply_train_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """Fill `train` from its recipe where the config leaves a key unset (between the
    type check and the schema's defaults, so the recipe wins over those)."""
    train = config.get("train") or {}
    recipe = TRAIN_RECIPES[train.get("recipe", "gemma-scope-1")]
    config["train"] = copy.deepcopy(recipe) | train
    return config


def schema_defaults(section: str) -> dict[str, Any]:
    """The defaults config/schema.yaml gives the keys of one top-level section (as
    `train`), for code that builds a section by hand (benchmarks)."""
    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"][section]
    return {k: v["default"] for k, v in props["properties"].items() if "default" in v}


def load_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read (if a path) and `validate_config`: what tests, the CLI and the
    benchmarks call."""
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    return validate_config(config)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """The one validation sequence (rules/common.smk and `load_config` both run it),
    in place: command-line strings typed by the schema, the types checked, the
    recipe's values, then the schema's defaults, then `check_config`. Raises
    ConfigError naming the key."""
    from jsonschema.exceptions import ValidationError
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    coerce_cli_strings(config)
    try:
        # Types first: snakemake's default-filling validator assumes objects are dicts.
        validate(config, str(SCHEMA_PATH), set_default=False)
        apply_train_recipe(config)
        validate(config, str(SCHEMA_PATH))
    except WorkflowError as err:
        # snakemake wraps the jsonschema error (raised inside its `except`) as context
        cause = err.__context__
        if isinstance(cause, ValidationError):
            raise ConfigError(describe_validation_error(cause)) from None
        raise ConfigError(str(err)) from None
    return check_config(config)


def coerce_cli_strings(config: dict[str, Any]) -> dict[str, Any]:
    """`snakemake --config 'evaluate={loss_tokens: 1024}'` hands nested values over
    as strings. Where the schema admits no string, turn a string into the YAML value
    it spells ("1024" → 1024, "true" → True); strings the schema allows stay."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())

    def resolve(sch: dict[str, Any]) -> dict[str, Any]:
        ref = sch.get("$ref", "")
        return schema["$defs"][ref.rsplit("/", 1)[-1]] if ref else sch

    def walk(value: Any, sch: Any) -> Any:
        if not isinstance(sch, dict):
            return value
        sch = resolve(sch)
        if isinstance(value, dict):
            props, extra = sch.get("properties", {}), sch.get("additionalProperties")
            return {k: walk(v, props.get(k, extra)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, sch.get("items")) for v in value]
        types = sch.get("type", [])
        types = [types] if isinstance(types, str) else types
        alts = [resolve(a) for a in sch.get("oneOf", [])]  # e.g. an integer or "unique"
        if any(a.get("const") == value for a in alts):
            return value
        for a in alts:
            t = a.get("type", [])
            types = [*types, *([t] if isinstance(t, str) else t)]
        if isinstance(value, str) and types and "string" not in types:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value  # the validator then names the key
            if isinstance(parsed, str) and "number" in types:
                try:
                    return float(parsed)  # YAML 1.1 reads "3e-4" as a string
                except ValueError:
                    return value
            if isinstance(parsed, bool) and value.lower() not in ("true", "false"):
                return value  # YAML 1.1's yes/no/on/off: refused, not guessed
            return parsed
        return value

    config.update(walk(config, schema))
    return config


def describe_validation_error(err: Any) -> str:
    """One line naming the key path and the problem, e.g. `models.m.dtype: ...`."""
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    return f"config key '{where}': {err.message}"


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def source_kind(src: str) -> str:
    """What a model `source` names: "embedded", "gguf" (an existing .gguf file),
    "local" (an existing directory) or "hub" (an org/name id); FileNotFoundError
    naming the source otherwise. Relative paths are from the working directory."""
    if src == "embedded":
        return "embedded"
    if src.endswith(".gguf"):
        if not Path(src).is_file():
            raise FileNotFoundError(f"GGUF file {src} does not exist")
        return "gguf"
    if Path(src).is_dir():
        return "local"
    if src.startswith((".", "/", "~")) or not HUB_ID.fullmatch(src):
        raise FileNotFoundError(
            f"model source '{src}' is neither an existing directory, a .gguf file, "
            "'embedded', nor a Hub id of the form org/name"
        )
    return "hub"


TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def has_chat_template(model_cfg: dict[str, Any]) -> bool | None:
    """Whether the model's chat prompts can be formatted, from the files at hand (no
    download): True with `chat_template` set, for a Gemma model (Gemma's turn format
    is built in: saesuite.data.models.chat_template) or a tokenizer that has one;
    False for a local or cached model whose tokenizer has none; None when that is
    not known offline (a Hub model not in the local cache, a GGUF file)."""
    if model_cfg.get("chat_template"):
        return True
    src = model_cfg["source"]
    if (known_name(src) or "").startswith("gemma"):
        return True
    kind = source_kind(src)
    if kind == "local":
        files = {n: Path(src) / n for n in ("config.json", "tokenizer_config.json",
                                            *TEMPLATE_FILES)}  # fmt: skip
    elif kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        files = {}
        for n in ("config.json", "tokenizer_config.json", *TEMPLATE_FILES):
            hit = try_to_load_from_cache(src, n, revision=model_cfg.get("revision"))
            if isinstance(hit, str):
                files[n] = Path(hit)
        if "tokenizer_config.json" not in files:
            return None
    else:
        return None
    present = {n: f for n, f in files.items() if f.is_file()}
    if "config.json" in present:
        hf = json.loads(present["config.json"].read_text())
        if str(hf.get("model_type", "")).startswith("gemma"):
            return True
    if any(n in present for n in TEMPLATE_FILES):
        return True
    tok = present.get("tokenizer_config.json")
    return tok is not None and bool(json.loads(tok.read_text()).get("chat_template"))


def resolve_train_tokens(config: dict[str, Any]) -> None:
    """data.train_tokens "unique" → the largest SAE budget of the suite, rounded up
    to whole sequences (in place; an integer stays as it is)."""
    data = config["data"]
    if data["train_tokens"] == "unique":
        ctx = data["context_size"]
        most = max(s.tokens for s in expand_suite(config))
        data["train_tokens"] = -(-most // ctx) * ctx


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Checks the schema cannot express; returns the config, changed in place only
    where `resolve_train_tokens` resolves data.train_tokens "unique"."""
    models = config["models"]
    for key, m in models.items():
        try:
            source_kind(m["source"])
        except FileNotFoundError as err:
            raise ConfigError(f"config key 'models.{key}.source': {err}") from None
        if m["base"] is not None:
            if m["base"] not in models:
                raise ConfigError(
                    f"config key 'models.{key}.base': '{m['base']}' is not a model key "
                    f"(known: {sorted(models)})"
                )
            if models[m["base"]]["role"] != "pt" or m["role"] != "it":
                raise ConfigError(
                    f"config key 'models.{key}.base': a base pairs an 'it' model with "
                    "a 'pt' model"
                )
    t = config["train"]
    if t["decoder_norm"] == "unit" and t["decoder_init_norm"] != 1.0:
        raise ConfigError(
            f"config key 'train.decoder_init_norm': {t['decoder_init_norm']} needs "
            "train.decoder_norm: free (unit-norm decoder rows are renormalised)"
        )
    for gi, group in enumerate(config["suite"]):
        for mk in group["models"] or []:
            if mk not in models:
                raise ConfigError(
                    f"config key 'suite.{gi}.models': '{mk}' is not a model key "
                    f"(known: {sorted(models)})"
                )
        rng = group["layers"]
        if isinstance(rng, dict) and rng["stop"] <= rng["start"]:
            raise ConfigError(f"config key 'suite.{gi}.layers': stop must exceed start")
        kind = group.get("kind", "sae")
        if group.get("skip") is not None and kind != "transcoder":
            raise ConfigError(
                f"config key 'suite.{gi}.skip': a skip connection is a transcoder's; "
                f"set suite.{gi}.kind: transcoder, or drop skip"
            )
        allowed = KINDS[group_kind(group)].sites
        if allowed is not None and not set(group["sites"]) <= set(allowed):
            raise ConfigError(
                f"config key 'suite.{gi}.sites': a {kind} reads an MLP's input "
                f"and predicts its output: sites must be [{', '.join(allowed)}], not "
                f"{group['sites']}"
            )
        for l0 in group["sparsity"].get("target_l0") or []:
            width = min(group["widths"])
            if l0 >= width:
                raise ConfigError(
                    f"config key 'suite.{gi}.sparsity.target_l0': {l0} active latents "
                    f"per token cannot be reached by an SAE of width {width} "
                    f"(suite.{gi}.widths); a target L0 must be below the width"
                )
    rel = config["release"]
    skips = [gi for gi, g in enumerate(config["suite"]) if g.get("skip") is not None]
    if rel["layout"] == "gemma-scope" and skips:
        raise ConfigError(
            f"config key 'release.layout': suite.{skips[0]} asks for skip-transcoders "
            "and Gemma Scope 1's layout (gemma-scope) has no skip connection, which "
            "its readers would drop: use gemma-scope-2 or saelens"
        )
    if rel["layout"] == "gemma-scope" and "{site}" not in rel["repo"]:
        raise ConfigError(
            "config key 'release.repo': the gemma-scope layout has no site in its "
            "folder names, so the pattern must contain {site} (one repo per site)"
        )
    try:
        rel["repo"].format(org="o", prefix="p", model="m", site="s")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"config key 'release.repo': '{rel['repo']}' is not a pattern over "
            f"{{org}}, {{prefix}}, {{model}}, {{site}} ({err})"
        ) from None
    if config["transfer"]["prompts"] is not None:
        try:
            load_prompts(config["transfer"]["prompts"])
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
    for si, src in enumerate(config["data"]["sources"]):
        need = {"files": "paths", "hub": "id"}.get(src["type"])
        if need and need not in src:
            raise ConfigError(
                f"config key 'data.sources.{si}.{need}' is required for type "
                f"'{src['type']}'"
            )
    resolve_train_tokens(config)
    data = config["data"]
    for split in ("train_tokens", "eval_tokens"):
        if data[split] < data["context_size"]:
            raise ConfigError(
                f"config key 'data.{split}' ({data[split]}) is smaller than one "
                f"sequence (data.context_size = {data['context_size']})"
            )
    for key in models:
        for layer in model_layers(config, key):
            n = n_layers(config, key)
            if n is not None and layer >= n:
                raise ConfigError(
                    f"layer {layer} requested for model '{key}', which has {n} layers "
                    f"(0..{n - 1}); check 'suite.*.layers'"
                )
    asked = config["dashboards"]["layers"]
    if config["dashboards"]["enabled"] and asked is not None:
        present = {layer for key in models for layer in model_layers(config, key)}
        missing = sorted(set(asked) - present)
        if missing:
            raise ConfigError(
                f"config key 'dashboards.layers': no dictionary of the suite is at "
                f"layer(s) {missing} (the suite's layers: {sorted(present)})"
            )
    return config


def has_dashboards(config: dict[str, Any], layer: int) -> bool:
    """Whether the dictionaries at `layer` get dashboards (dashboards.enabled and
    dashboards.layers)."""
    d = config["dashboards"]
    return d["enabled"] and (d["layers"] is None or layer in d["layers"])


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a validated config (recorded in every output)."""
    return stable_hash(config, compact=True)


def n_layers(config: dict[str, Any], model_key: str) -> int | None:
    """Decoder layer count: from the config, the known-model table, or config.json."""
    m = config["models"][model_key]
    if m["n_layers"]:
        return m["n_layers"]
    shape = known_shape(m["source"])
    if shape:
        return shape.n_layers
    local = Path(m["source"])
    cfg_json = local / "config.json" if local.is_dir() else None
    if cfg_json and cfg_json.is_file():
        cfg = json.loads(cfg_json.read_text())
        cfg = cfg.get("text_config", cfg)
        return int(cfg["num_hidden_layers"])
    return None


def known_site_width(config: dict[str, Any], model_key: str, kind: str) -> int:
    """d_in of a site from the known-model table (4096 if the model is unknown: only
    used for resource estimates)."""
    shape = known_shape(config["models"][model_key]["source"])
    if shape is None:
        return 4096
    return shape.site_width(kind)


def group_layers(config: dict[str, Any], gi: int, model_key: str) -> list[int]:
    spec = config["suite"][gi]["layers"]
    if spec == "all":
        n = n_layers(config, model_key)
        if n is None:
            raise ConfigError(
                f"config key 'suite.{gi}.layers' is 'all' but the layer count of model "
                f"'{model_key}' is unknown offline: set 'models.{model_key}.n_layers'"
            )
        return list(range(n))
    if isinstance(spec, dict):
        return list(range(spec["start"], spec["stop"], spec.get("step", 1)))
    return sorted(spec)


def group_models(config: dict[str, Any], gi: int) -> list[str]:
    return config["suite"][gi]["models"] or list(config["models"])


def model_layers(config: dict[str, Any], model_key: str) -> list[int]:
    layers: set[int] = set()
    for gi in range(len(config["suite"])):
        if model_key in group_models(config, gi):
            layers.update(group_layers(config, gi, model_key))
    return sorted(layers)


def default_tokens(width: int) -> int:
    """Gemma Scope's budget: 4B tokens for 16.4K latents, 16B for 1M, 8B otherwise."""
    if width <= 2**14:
        return 4 * 10**9
    if width >= 2**20:
        return 16 * 10**9
    return 8 * 10**9


def expand_suite(config: dict[str, Any]) -> list[Dictionary]:
    """Every dictionary of the suite, deduplicated and sorted."""
    out: set[Dictionary] = set()
    for gi, g in enumerate(config["suite"]):
        sp = g["sparsity"]
        if "lambdas" in sp:
            ladder = [(lam, None) for lam in sp["lambdas"]]
        else:
            ladder = [(sp["lambda"], l0) for l0 in sp["target_l0"]]
        kind = group_kind(g)
        for mk in group_models(config, gi):
            for layer, site, width in itertools.product(
                group_layers(config, gi, mk), g["sites"], g["widths"]
            ):
                tokens = g["tokens"] or default_tokens(width)
                for lam, l0 in ladder:
                    out.add(
                        Dictionary.of(
                            mk,
                            kind,
                            layer,
                            site,
                            width,
                            tokens,
                            lambda_=lam,
                            target_l0=l0,
                        )
                    )
    return sorted(out)


def group_kind(group: dict[str, Any]) -> str:
    """The KINDS key of a suite group's dictionaries (its `kind` and `skip`)."""
    if group.get("kind", "sae") == "sae":
        return "sae"
    return "skip_transcoder" if group.get("skip") == "affine" else "transcoder"


def model_sites(config: dict[str, Any], model_key: str) -> list[Site]:
    """Every site the model's activation cache must hold: what its dictionaries read
    and what they write."""
    suite = [d for d in expand_suite(config) if d.model == model_key]
    return sorted({x for d in suite for x in (*d.reads, *d.writes)})


def sequences(config: dict[str, Any], split: str) -> int:
    """Number of whole sequences in a split ("train" or "eval")."""
    data = config["data"]
    return data[f"{split}_tokens"] // data["context_size"]


def seqs_per_chunk(config: dict[str, Any]) -> int:
    ctx = config["data"]["context_size"]
    return max(1, config["activations"]["chunk_tokens"] // ctx)


def n_chunks(config: dict[str, Any]) -> int:
    return math.ceil(sequences(config, "train") / seqs_per_chunk(config))


def output_root(config: dict[str, Any]) -> Path:
    return Path(config["output_root"])


def cache_root(config: dict[str, Any]) -> Path:
    return Path(config["cache_root"] or Path(config["output_root"]) / "cache")
