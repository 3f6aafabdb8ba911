"""Configuration: validation against config/schema.yaml and the checks a schema
cannot express, the train recipes (config/recipes.yaml, data beside the schema), the
schema's defaults. rules/common.smk and `load_config` (tests, the CLI, benchmarks)
both run `validate_config`. The suite's expansion is `spec.suite`; model sources are
probed in `spec.sources`. Nothing here imports torch, so planning stays fast.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from saesuite.spec.dictionary import KINDS
from saesuite.spec.errors import ConfigError
from saesuite.spec.hashing import stable_hash
from saesuite.spec.prompts import load_prompts
from saesuite.spec.sources import source_kind
from saesuite.spec.suite import (
    expand_suite,
    group_kind,
    group_layers,
    group_models,
    model_layers,
    n_layers,
)

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/saesuite/spec/config.py


SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


# Named train sections over the schema's defaults (`train.recipe`): data beside the
# schema, config/recipes.yaml (what each sets and the measurements that chose it).
RECIPES_PATH = REPO_ROOT / "config" / "recipes.yaml"
TRAIN_RECIPES: dict[str, dict[str, Any]] = yaml.safe_load(RECIPES_PATH.read_text())


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


def resolve_train_tokens(config: dict[str, Any]) -> None:
    """data.train_tokens "unique" → the largest SAE budget of the suite, rounded up
    to whole sequences (in place; an integer stays as it is)."""
    data = config["data"]
    if data["train_tokens"] == "unique":
        ctx = data["context_size"]
        most = max(s.tokens for s in expand_suite(config))
        data["train_tokens"] = -(-most // ctx) * ctx


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Checks the schema cannot express, one section after another (the first
    problem raises ConfigError naming its key); returns the config, changed in place
    only where `resolve_train_tokens` resolves data.train_tokens "unique"."""
    _check_models(config)
    _check_train(config)
    for gi, group in enumerate(config["suite"]):
        _check_group(config, gi, group)
    _check_release(config)
    _check_inputs(config)
    resolve_train_tokens(config)
    _check_sizes(config)
    _check_layers(config)
    _check_dashboards(config)
    return config


def _check_models(config: dict[str, Any]) -> None:
    """Every source exists or names a Hub id; a base pairs an IT model with a PT one."""
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


def _check_train(config: dict[str, Any]) -> None:
    t = config["train"]
    if t["decoder_norm"] == "unit" and t["decoder_init_norm"] != 1.0:
        raise ConfigError(
            f"config key 'train.decoder_init_norm': {t['decoder_init_norm']} needs "
            "train.decoder_norm: free (unit-norm decoder rows are renormalised)"
        )


def _check_group(config: dict[str, Any], gi: int, group: dict[str, Any]) -> None:
    """Suite group `gi`: known models, a layer range, its kind's sites, L0 < width."""
    models = config["models"]
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
    if KINDS[kind].spans:
        n = len(rng) if isinstance(rng, list) else None
        if isinstance(rng, dict):
            n = len(range(rng["start"], rng["stop"], rng.get("step", 1)))
        if n is not None and n < 2:
            raise ConfigError(
                f"config key 'suite.{gi}.layers': a {kind} spans two or more layers "
                f"(one layer's is a transcoder: kind: transcoder), not {rng}"
            )
    if group.get("skip") is not None and kind != "transcoder":
        raise ConfigError(
            f"config key 'suite.{gi}.skip': a skip connection is a transcoder's; "
            f"set suite.{gi}.kind: transcoder, or drop skip"
        )
    k = KINDS[group_kind(group)]
    if k.sites is not None and not set(group["sites"]) <= set(k.sites):
        raise ConfigError(
            f"config key 'suite.{gi}.sites': a {kind} ({k.title}) takes sites "
            f"that must be [{', '.join(k.sites)}], not {group['sites']}"
        )
    for l0 in group["sparsity"].get("target_l0") or []:
        width = min(group["widths"])
        if l0 >= width:
            raise ConfigError(
                f"config key 'suite.{gi}.sparsity.target_l0': {l0} active latents "
                f"per token cannot be reached by an SAE of width {width} "
                f"(suite.{gi}.widths); a target L0 must be below the width"
            )


def _check_release(config: dict[str, Any]) -> None:
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


def _check_inputs(config: dict[str, Any]) -> None:
    """The transfer prompts load; each data source has the key its type needs."""
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


def _check_sizes(config: dict[str, Any]) -> None:
    data = config["data"]
    for split in ("train_tokens", "eval_tokens"):
        if data[split] < data["context_size"]:
            raise ConfigError(
                f"config key 'data.{split}' ({data[split]}) is smaller than one "
                f"sequence (data.context_size = {data['context_size']})"
            )


def _check_layers(config: dict[str, Any]) -> None:
    """Every group's layers exist in each of its models (CLT spans included)."""
    for gi in range(len(config["suite"])):
        for key in group_models(config, gi):
            n = n_layers(config, key)
            for layer in group_layers(config, gi, key):
                if n is not None and layer >= n:
                    raise ConfigError(
                        f"layer {layer} requested for model '{key}', which has {n} "
                        f"layers (0..{n - 1}); check 'suite.{gi}.layers'"
                    )


def _check_dashboards(config: dict[str, Any]) -> None:
    models = config["models"]
    asked = config["dashboards"]["layers"]
    if config["dashboards"]["enabled"] and asked is not None:
        present = {layer for key in models for layer in model_layers(config, key)}
        missing = sorted(set(asked) - present)
        if missing:
            raise ConfigError(
                f"config key 'dashboards.layers': no dictionary of the suite is at "
                f"layer(s) {missing} (the suite's layers: {sorted(present)})"
            )


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a validated config (recorded in every output)."""
    return stable_hash(config, compact=True)
