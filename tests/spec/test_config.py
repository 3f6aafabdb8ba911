"""Config validation (schema + semantic checks) and the suite expansion."""

from __future__ import annotations

import pytest
import yaml
from helpers import make_config

from saesuite.spec.config import REPO_ROOT, ConfigError, load_config
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.suite import expand_suite, model_sites, n_chunks

MODEL = "google/gemma-2-2b"  # known shape: 26 layers, no download needed


def test_default_config_validates_and_fills_defaults():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert cfg["models"]["gemma-3-270m"]["dtype"] == "float32"
    assert cfg["models"]["gemma-3-270m"]["trust_remote_code"] is False
    assert cfg["activations"]["min_free_gb"] == 1.0
    specs = expand_suite(cfg)
    # 4 layers × 3 sites × 1 width × 2 targets, and 2 layers × 2 kinds × 2 targets
    assert len(specs) == 24 + 8
    assert {s.site for s in specs} == {"res", "att", "mlp"}
    kinds = sorted((s.layer, s.kind) for s in specs if s.kind != "sae")
    assert kinds == sorted(
        2
        * [
            (9, "transcoder"),
            (15, "transcoder"),
            (9, "skip_transcoder"),
            (15, "skip_transcoder"),
        ]
    )
    # res and att at 4 layers; the CLT reads and writes every layer's MLP input and
    # output, the SAEs' and transcoders' among them
    assert len(model_sites(cfg, "gemma-3-270m")) == 4 * 2 + 18 * 2
    assert n_chunks(cfg) == 4


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.update(bogus=1), "bogus"),
        (lambda c: c["models"]["tiny"].update(dtype="float64"), "models.tiny.dtype"),
        (lambda c: c["suite"][0].update(widths=["16k"]), "suite.0.widths.0"),
        (lambda c: c["suite"][0].update(sites=["resid"]), "suite.0.sites.0"),
        (lambda c: c["suite"][0].update(layers="most"), "suite.0.layers"),
        (
            lambda c: c["suite"][0].update(
                sparsity={"lambdas": [1e-3], "target_l0": [5]}
            ),
            "suite.0.sparsity",
        ),
        (lambda c: c["data"].update(context_size="1k"), "data.context_size"),
        (lambda c: c["models"]["tiny"].update(trust_remote_code="yes"), "trust_remote"),
        (lambda c: c["activations"].update(chunk_size=5), "activations"),
        (lambda c: c.pop("suite"), "suite"),
    ],
)
def test_schema_rejects_bad_config_naming_the_key(mutate, key):
    cfg = make_config(MODEL)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert key in str(err.value)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["suite"][0].update(layers=[30]), "layer 30"),
        (lambda c: c["suite"][0].update(models=["nope"]), "suite.0.models"),
        (
            lambda c: c["models"].update(
                it={"source": MODEL, "role": "it", "base": "x"}
            ),
            "models.it.base",
        ),
        (lambda c: c["data"].update(train_tokens=10), "data.train_tokens"),
        (
            lambda c: c["data"].update(sources=[{"type": "files"}]),
            "data.sources.0.paths",
        ),
        (
            lambda c: (
                c["models"].update(other={"source": "org/unknown-model"})
                or c["suite"][0].update(layers="all")
            ),
            "models.other.n_layers",
        ),
        (
            lambda c: c.update(transfer={"prompts": "/nonexistent/prompts.txt"}),
            "transfer.prompts",
        ),
        (
            lambda c: c.update(release={"layout": "gemma-scope", "repo": "o/{model}"}),
            "release.repo",
        ),
        (lambda c: c.update(release={"repo": "o/{model}-{layer}"}), "release.repo"),
        (
            lambda c: c["suite"][0].update(
                widths=[1024], sparsity={"target_l0": [5000]}
            ),
            "'suite.0.sparsity.target_l0': 5000 active latents per token cannot be "
            "reached by an SAE of width 1024",
        ),
        (
            lambda c: c["models"]["tiny"].update(source="gemma-2-2b"),
            "'models.tiny.source': model source 'gemma-2-2b' is neither",
        ),
        (
            lambda c: c["models"]["tiny"].update(source="./models/mine"),
            "'models.tiny.source': model source './models/mine' is neither",
        ),
        (
            lambda c: c["models"]["tiny"].update(source="/nowhere/m.gguf"),
            "'models.tiny.source': GGUF file /nowhere/m.gguf does not exist",
        ),
    ],
)
def test_semantic_checks_name_the_key(mutate, needle):
    cfg = make_config(MODEL)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert needle in str(err.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_layers_forms_and_union_of_groups():
    cfg = make_config(
        MODEL,
        suite=[
            {
                "layers": "all",
                "sites": ["res"],
                "widths": [16384],
                "sparsity": {"lambdas": [6e-4, 1e-3]},
            },
            {
                "layers": {"start": 10, "stop": 16, "step": 2},
                "sites": ["res", "att"],
                "widths": [16384, 65536],
                "sparsity": {"lambdas": [6e-4]},
                "tokens": 1000,
            },
        ],
    )
    specs = expand_suite(load_config(cfg))
    res16k = {s for s in specs if s.site == "res" and s.width == 16384}
    # group 1: 26 layers × 2 λ; group 2 adds layers 10,12,14 with its own token budget
    assert len({(s.layer, s.value) for s in res16k}) == 52
    att = [s for s in specs if s.site == "att"]
    assert sorted({s.layer for s in att}) == [10, 12, 14]
    assert {s.width for s in att} == {16384, 65536}
    first = next(s for s in specs if s.layer == 0)
    assert first.tokens == 4 * 10**9  # Gemma Scope's budget for 16.4K latents
    big = next(s for s in specs if s.width == 65536)
    assert big.tokens == 1000 and big.label == "lambda_0.0006"


def test_pt_it_pair_and_target_l0_labels():
    cfg = make_config(MODEL)
    cfg["models"]["it"] = {
        "source": "google/gemma-2-2b-it",
        "role": "it",
        "base": "tiny",
    }
    cfg = load_config(cfg)
    specs = expand_suite(cfg)
    assert {s.model for s in specs} == {"tiny", "it"}
    s = specs[0]
    assert isinstance(s, Dictionary) and s.penalty == "target_l0"
    assert s.path == f"layer_1/{s.site}/width_128/l0_8"


def test_nested_command_line_strings_take_their_schema_types():
    """What `snakemake --config 'evaluate={loss_tokens: 1024}'` hands over: strings
    become numbers and booleans only where the schema admits no string."""
    from saesuite.spec.config import coerce_cli_strings

    cfg = make_config("test/tiny")
    cfg["models"]["tiny"]["revision"] = "12345"  # a string is allowed: kept
    cfg["evaluate"] = {"loss_tokens": "1024", "batch_size": "4"}
    cfg["publish"] = {"upload": "true", "private": "False", "revision": "main"}
    cfg["train"]["lr"] = "3e-4"
    out = load_config(coerce_cli_strings(cfg))
    assert out["evaluate"]["loss_tokens"] == 1024 and out["evaluate"]["batch_size"] == 4
    assert out["publish"]["upload"] is True and out["publish"]["private"] is False
    assert out["models"]["tiny"]["revision"] == "12345"
    assert out["train"]["lr"] == 3e-4
    # a oneOf of an integer and a constant: "2048" is the integer, "unique" stays
    # ("unique": the largest SAE budget, rounded up to whole 32-token sequences)
    for given, want in (("2048", 2048), ("unique", 626 * 32)):
        cfg = make_config("test/tiny")
        cfg["data"] = {**cfg["data"], "train_tokens": given}
        cfg["suite"][0]["tokens"] = 20001
        assert load_config(coerce_cli_strings(cfg))["data"]["train_tokens"] == want
    with pytest.raises(ConfigError, match="evaluate.loss_tokens"):
        load_config(
            coerce_cli_strings(
                {**make_config(MODEL), "evaluate": {"loss_tokens": "lots"}}
            )
        )


def test_the_schema_and_the_architectures_name_the_sites_of_spec_sites():
    """One site vocabulary: every site enum of the schema is spec.sites.SITES, and
    every architecture places every site but `res` (the block's own output)."""
    from saesuite.spec.config import SCHEMA_PATH
    from saesuite.spec.sites import ARCHITECTURES, SITES

    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "res" in node.get("enum", []):
                enums.append(tuple(node["enum"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(SCHEMA_PATH.read_text()))
    assert enums and set(enums) == {SITES}
    for arch in ARCHITECTURES.values():
        assert all(getattr(arch, kind) for kind in SITES if kind != "res")


def test_a_model_without_chat_template_is_refused_before_any_job(tiny_models, tmp_path):
    """A base model whose tokenizer has no chat template (the tiny Llama, as Llama,
    Qwen and Pythia base checkpoints) cannot take the format-shift check, on by
    default: the plan is refused naming the key and both remedies; either remedy, or
    a template in the model's folder, or a Gemma model (its format is built in), lets
    it through. A Hub model not in the cache is not known offline: planned."""
    import shutil

    from saesuite.spec.checks import FORMAT_SHIFT
    from saesuite.spec.config import ConfigError
    from saesuite.spec.sources import has_chat_template
    from saesuite.spec.workflow import Workflow

    llama = str(tiny_models["llama"])
    with pytest.raises(ConfigError) as err:
        Workflow(load_config(make_config(llama)))
    msg = str(err.value)
    assert "'models.tiny.source'" in msg and "no chat template" in msg
    assert (
        "'models.tiny.chat_template'" in msg and "'transfer.format_shift: false'" in msg
    )

    def kinds(**over) -> list[str]:
        cfg = make_config(llama, **over.pop("top", {}))
        cfg["models"]["tiny"].update(over)
        return [c.kind for c in Workflow(load_config(cfg)).checks.values()]

    assert kinds(chat_template="{{ messages[0]['content'] }}") == [FORMAT_SHIFT]
    assert kinds(top={"transfer": {"format_shift": False}}) == []
    with_file = tmp_path / "llama"
    shutil.copytree(llama, with_file)
    (with_file / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert has_chat_template({"source": str(with_file)}) is True
    assert has_chat_template({"source": llama}) is False
    assert has_chat_template({"source": str(tiny_models["gemma3"])}) is True
    assert has_chat_template({"source": "nobody/not-in-the-cache"}) is None
    assert Workflow(load_config(make_config("nobody/not-in-the-cache"))).checks

    cfg = make_config(llama, transfer={"format_shift": False})
    cfg["models"]["tiny"]["chat"] = True  # tokenising in chat form needs one too
    with pytest.raises(ConfigError, match="models.tiny.chat is true") as err:
        Workflow(load_config(cfg))
    assert "format_shift" not in str(err.value)


def test_transcoder_groups_are_planned_and_nonsense_is_refused():
    """kind: transcoder reads layer L's mlp_in and predicts its mlp; skip: affine
    makes skip-transcoders; both kinds train in one job (they read the same sites)
    beside the MLP's SAEs,
    the cache holds both sites once, and releases hold SAEs only (issue 16)."""
    import copy

    from saesuite.spec import make_jobs
    from saesuite.spec.config import ConfigError
    from saesuite.spec.workflow import Workflow

    cfg = make_config()
    base = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    cfg["suite"] = [base, {**base, "kind": "transcoder"},
                    {**base, "kind": "transcoder", "skip": "affine"}]  # fmt: skip
    wf = Workflow(load_config(cfg))
    kinds = {(s.kind, s.input_site.name, s.output_site.name, s.path) for s in wf.suite}
    assert ("skip_transcoder", "layer_1.mlp_in", "layer_1.mlp",
            "layer_1/skip_transcoder/width_128/l0_8") in kinds  # fmt: skip
    assert len(wf.suite) == 6 and wf.model_sites("tiny") == [(1, "mlp"), (1, "mlp_in")]
    assert [s.rsplit("/", 2)[1] for s in wf.site_summaries()] == [
        "mlp",
        "mlp_in_to_mlp",
    ]
    job = make_jobs.train_job(wf.config, wf.suite, "tiny", 1, "mlp_in_to_mlp")
    assert (job.input_site, job.output_site) == ("layer_1.mlp_in", "layer_1.mlp")
    assert {d.kind for d in job.dictionaries} == {"skip_transcoder", "transcoder"}
    assert list(wf.releases) == [
        "saesuite--saesuite-tiny-mlp",
        "saesuite--saesuite-tiny-transcoder",
    ]
    members = wf.releases["saesuite--saesuite-tiny-transcoder"].members
    assert (
        sorted(m.dictionary.kind for m in members)
        == ["skip_transcoder"] * 2 + ["transcoder"] * 2
    )
    members = make_jobs.eval_job(wf.config, wf.suite, "tiny", "text", 1).members
    assert {m.key for m in members} == {f"tiny/{s.path}" for s in wf.suite}

    for bad, key, match in (
        ({"kind": "transcoder", "sites": ["res"]}, "sites", r"must be \[mlp\]"),
        ({"skip": "affine"}, "skip", "kind: transcoder"),
        ({"kind": "acausal"}, "kind", "acausal"),
    ):
        raw = copy.deepcopy(cfg)
        raw["suite"] = [{**base, **bad}]
        with pytest.raises(ConfigError, match=match) as err:
            load_config(raw)
        assert f"suite.0.{key}" in str(err.value)


def test_clt_groups_expand_to_one_job_each_and_nonsense_is_refused():
    """kind: clt makes one CLT per width × rung over the group's layers, trained,
    evaluated and released by jobs of its own; the cache holds every layer's two MLP
    sites; the per-layer jobs (evaluation by layer) do not grow with its layers; a
    span of one layer, a layer past the model's or other sites are refused, named."""
    import copy

    from saesuite.spec import make_jobs
    from saesuite.spec.config import ConfigError
    from saesuite.spec.workflow import Workflow

    cfg = make_config()
    sae = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    clt = {**sae, "layers": {"start": 0, "stop": 4}, "kind": "clt"}
    cfg["suite"] = [sae, clt]
    cfg["models"]["tiny"]["n_layers"] = 4
    wf = Workflow(load_config(cfg))
    assert [d.path for d in wf.spanning] == [
        "clt/layers_0-3/width_128/l0_8", "clt/layers_0-3/width_128/l0_16"]  # fmt: skip
    assert wf.model_sites("tiny") == [
        (L, k) for L in range(4) for k in ("mlp", "mlp_in")
    ]
    assert [p.rsplit("/", 1)[1] for p in wf.eval_layers(wf.evaluations[0])] == [
        "layer_1.json"]  # fmt: skip
    job = make_jobs.spanning_train_job(
        wf.config, wf.spanning, "tiny", wf.spanning[0].path
    )
    assert job.name == "clt.layers_0-3.width_128.l0_8" and job.checkpoint.endswith(
        "checkpoints/clt.layers_0-3.width_128.l0_8.pt")  # fmt: skip
    assert set(wf.spanning_summaries()) <= set(wf.final_outputs())
    assert set(wf.spanning_evals()) <= set(wf.final_outputs())
    release = wf.releases["saesuite--saesuite-tiny-clt"]
    assert release.spanning and wf.release_inputs("saesuite--saesuite-tiny-clt") == [
        m.eval for m in release.members]  # fmt: skip
    for bad, key, match in (
        ({"layers": [2]}, "layers", "spans two or more layers"),
        ({"layers": {"start": 1, "stop": 2}}, "layers", "spans two or more layers"),
        ({"layers": [2, 4]}, "layers", "which has 4 layers"),
        ({"sites": ["res"]}, "sites", r"must be \[mlp\]"),
        ({"skip": "affine"}, "skip", "kind: transcoder"),
    ):
        raw = copy.deepcopy(cfg)
        raw["suite"] = [{**clt, **bad}]
        with pytest.raises(ConfigError, match=match) as err:
            load_config(raw)
        assert f"suite.0.{key}" in str(err.value)


def test_skip_transcoders_are_refused_for_gemma_scope_1s_layout():
    from saesuite.spec.config import ConfigError

    cfg = make_config(release={"layout": "gemma-scope"})
    cfg["suite"] = [{**cfg["suite"][0], "sites": ["mlp"], "kind": "transcoder",
                     "skip": "affine"}]  # fmt: skip
    with pytest.raises(ConfigError, match="'release.layout': suite.0 asks for skip"):
        load_config(cfg)
    cfg["suite"][0].pop("skip")
    assert load_config(cfg)["suite"][0]["kind"] == "transcoder"


def test_a_train_recipe_fills_its_keys_and_a_set_key_wins():
    """train.recipe: gemma-scope-1 is the schema's defaults exactly (what the paper's
    suites get); a named recipe sets its keys over them; a key the config sets wins
    over its recipe; the GS2 suite uses GS2's recipe."""
    from saesuite.spec.config import SCHEMA_PATH, TRAIN_RECIPES, schema_defaults

    gs1 = load_config(make_config(MODEL, train={}))["train"]
    assert gs1 == schema_defaults("train")
    assert gs1["recipe"] == "gemma-scope-1" and gs1["decoder_norm"] == "unit"
    ours = load_config(make_config(MODEL, train={"recipe": "saesuite", "lr": 2e-3}))
    t = ours["train"]
    assert {k: t[k] for k in TRAIN_RECIPES["saesuite"]} == TRAIN_RECIPES["saesuite"]
    assert t["lr"] == 2e-3 and t["batch_size"] == gs1["batch_size"]
    no_pre = {"recipe": "saesuite", "pre_act_coefficient": 0.0}
    mine = load_config(make_config(MODEL, train=no_pre))
    assert mine["train"]["pre_act_coefficient"] == 0.0
    assert mine["train"]["decoder_norm"] == "free"
    with pytest.raises(ConfigError, match="train.recipe"):
        load_config(make_config(MODEL, train={"recipe": "gemma-scope-3"}))
    # every recipe's key is a train key of the schema
    keys = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["train"]["properties"]
    assert all(set(r) <= set(keys) for r in TRAIN_RECIPES.values())
    # the schema's recipe names are config/recipes.yaml's, and its values typed
    assert keys["recipe"]["enum"] == list(TRAIN_RECIPES)
    assert TRAIN_RECIPES["saesuite"]["pre_act_coefficient"] == 1e-3
    gs2 = load_config(REPO_ROOT / "config" / "suites" / "gemma-scope-2-270m.yaml")
    assert gs2["train"]["recipe"] == "gemma-scope-2"
    assert gs2["train"]["matryoshka_fractions"] == [0.0625, 0.25]
    for name in ("gemma-2-2b-pt", "gemma-2-9b-it", "gemma-2-2b-transcoders"):
        suite = load_config(REPO_ROOT / "config" / "suites" / f"{name}.yaml")
        assert suite["train"]["recipe"] == "gemma-scope-1", name


def test_one_validation_sequence_types_strings_but_never_guesses_a_boolean():
    """load_config runs validate_config, as rules/common.smk does: a config handed
    over as strings (snakemake --config) is typed the same either way, and YAML 1.1's
    yes/no is refused rather than read as a boolean (trust_remote_code among them)."""
    cfg = make_config(MODEL)
    cfg["data"] = {**cfg["data"], "context_size": "64"}
    assert load_config(cfg)["data"]["context_size"] == 64
    for word in ("yes", "on"):
        bad = make_config(MODEL)
        bad["models"]["tiny"]["trust_remote_code"] = word
        with pytest.raises(ConfigError, match="models.tiny.trust_remote_code"):
            load_config(bad)
    ok = make_config(MODEL)
    ok["models"]["tiny"]["trust_remote_code"] = "false"
    assert load_config(ok)["models"]["tiny"]["trust_remote_code"] is False
