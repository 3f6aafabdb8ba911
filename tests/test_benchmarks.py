"""Every benchmark in benchmarks/ runs in its quick mode (tiny shapes, a few steps),
so none can rot unnoticed: each prints its markdown table with a row per case and
finite, non-negative measurements. The numbers themselves are not checked here: speed
goals live in BENCHMARKS.md, not in tests."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from saesuite.spec.config import REPO_ROOT


def bench(name: str):
    # as `python benchmarks/<name>.py` runs it: its folder (benchmarks/common.py) first
    if str(REPO_ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(out: str) -> list[list[str]]:
    """The body rows of the markdown table in `out` (header and rule dropped)."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3 and set(lines[1]) <= set("|-: "), out
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell)]


def assert_measured(rows: list[list[str]], columns: range) -> None:
    for row in rows:
        for cell in (row[i] for i in columns):
            vals = numbers(cell)
            assert vals and all(math.isfinite(v) and v >= 0 for v in vals), row


def test_train_benchmark_against_saelens(capsys):
    bench("train").main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["saesuite", "SAELens"]
    assert_measured([r[:2] + r[4:] for r in rows], range(1, 6))
    assert "ratio saesuite / SAELens:" in out and "width 64, batch 128, 6 steps" in out


def test_extract_benchmark_on_a_local_model(capsys, tiny_models):
    bench("extract").main(["--quick", "--model", str(tiny_models["gemma3"])])
    rows = table(capsys.readouterr().out)
    # 4 layers × 4 site kinds (res, att, mlp, mlp_in) of the tiny model
    assert [r[0] for r in rows] == [
        "bare forward",
        "extract 1 site",
        "extract 16 sites",
    ]
    assert_measured(rows, range(1, 4))


def test_evaluate_benchmark_on_a_local_model(capsys, tiny_models):
    bench("evaluate").main(["--quick", "--model", str(tiny_models["gemma3"])])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and "(random)" in out
    for row in rows:  # marginal costs may come out negative on tiny, noisy timings
        assert all(numbers(c) and math.isfinite(numbers(c)[0]) for c in row[1:]), row


def test_loss_tokens_benchmark_pools_blocks_into_one_evaluation(capsys, tiny_models):
    """Its blocks' delta losses, weighted by predictions, are the delta loss of one
    evaluation over all their tokens; its paired statistics are the textbook ones."""
    lt = bench("loss_tokens")
    lt.main(["--quick", "--model", str(tiny_models["gemma3"])])
    out = capsys.readouterr().out
    (row,) = table(out)
    assert row[:3] == ["1", "res", "64"] and row[-1].endswith(" of 4")
    from saesuite.eval.passes import evaluate
    from saesuite.sae.jumprelu import JumpReLUSAE
    from saesuite.spec.sites import Site

    model = lt.local_model(str(tiny_models["gemma3"]))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 200, (6, 8), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    site = Site(1, "res")
    sae = JumpReLUSAE(model.config.get_text_config().hidden_size, 32).initialize(g)
    saes = {"a": (site, site, sae)}
    deltas, w = lt.block_deltas(model, ids, mask, saes, 2)
    assert len(deltas["a"]) == 3 and w == [2 * 6] * 3  # 2 seqs × 6 predictions
    whole = evaluate(model, ids, mask, saes, loss_sequences=6)["a"].metrics()
    pooled = sum(d * n for d, n in zip(deltas["a"], w)) / sum(w)
    assert pooled == pytest.approx(whole["delta_loss"], rel=1e-5)

    r = lt.paired([1.0, 2.0], [2.0, 2.0], [1, 1])  # differences 1 and 0
    assert r["lo"] == 1.5 and r["hi"] == 2.0 and r["diff"] == 0.5
    assert r["sd"] == pytest.approx(math.sqrt(0.5)) and r["se"] == pytest.approx(0.5)
    assert r["flips"] == 1  # the block with difference 0 does not say "higher"


def test_plan_benchmark_on_one_suite(capsys):
    bench("plan").main(["--quick"])
    rows = table(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0][0] == "gemma-2-27b-pt"
    assert_measured(rows, range(1, 5))


@pytest.mark.slow
def test_shard_benchmark_in_two_processes(capsys):
    bench("shard").main(["--quick"])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["2"] and "width 256, d_in 16" in out
    assert_measured(rows, range(1, 4))


def test_store_benchmark_reads_verified_and_unverified(capsys):
    bench("store").main(["--quick"])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["unverified", "verified"]
    assert_measured(rows, range(1, 4))
    assert "xxh3_64 blocks of 16 MiB" in out


# What the GPU machine lacks (issue 15): the script must run without them.
ABSENT_ON_GPU_MACHINE = ("snakemake", "gguf", "sae_lens", "jsonschema")


def test_gpu_benchmark_on_cpu_without_the_workflow_packages(tmp_path):
    """The GPU proof's quick CPU run, in a process where snakemake, gguf, sae-lens and
    jsonschema cannot be imported: every section is written, every correctness check
    passes, the training grid is complete and the threshold gives the asked L0."""
    block = "; ".join(f"sys.modules[{n!r}] = None" for n in ABSENT_ON_GPU_MACHINE)
    code = (
        f"import runpy, sys; {block}; sys.argv = ['gpu.py', '--device', 'cpu', "
        f"'--quick', '--out', {str(tmp_path)!r}]; "
        # `python3 benchmarks/gpu.py` puts the script's folder first on sys.path
        "sys.path.insert(0, 'benchmarks'); "
        "runpy.run_path('benchmarks/gpu.py', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu.json").read_text())
    sec = rep["sections"]
    assert set(sec) == {"correctness", "extraction", "training", "saelens",
                        "evaluation"}  # fmt: skip
    assert "not importable" in sec["saelens"][0]["note"]  # as on the GPU machine
    # extraction, 3 × 2 step checks for an SAE and a skip-transcoder, evaluation
    assert len(sec["correctness"]) == 14
    assert all(c["pass"] for c in sec["correctness"])
    assert any("skip-transcoder" in c["check"] and "W_skip" in c["check"]
               for c in sec["correctness"])  # fmt: skip
    # 2 d_in × 2 widths × 2 L0 targets × {dense, sparse}
    cases = {
        (t["d_in"], t["width"], t["target_l0"], t["step"]) for t in sec["training"]
    }
    assert len(cases) == len(sec["training"]) == 16
    for t in sec["training"]:
        assert abs(t["l0"] - t["target_l0"]) < 0.25 * t["target_l0"], t
        assert t["tok_s"] > 0 and t["peak_bytes"] is None  # no device memory on CPU
        if t["step"] == "sparse":  # the rule of train.step: auto, sparse_density 0.05
            assert t["auto"] == ("sparse" if t["l0"] < 0.05 * t["width"] else "dense")
    assert [e["model"] for e in sec["extraction"]] == ["gemma-3-270m"] * 2 + [
        "gemma-2-2b"
    ] * 2
    md = (tmp_path / "gpu.md").read_text()
    assert md == bench("gpu").markdown(rep)
    assert "| extraction batch: 8 sites, float32 |" in md and "FAIL" not in md


def test_gpu_benchmark_checks_fail_on_a_disagreement():
    gpu = bench("gpu_checks")
    g = torch.Generator().manual_seed(0)
    ref = {"W_enc": torch.randn(8, 4, generator=g), "threshold_raw": torch.rand(4)}
    same = {k: v.clone() for k, v in ref.items()}
    assert all(c["pass"] for c in gpu.pair("x", same, ref))
    off = {**same, "W_enc": ref["W_enc"] * (1 + 2 * gpu.GRAD_TOL)}
    assert [c["pass"] for c in gpu.pair("x", off, ref)] == [False, True]
    off = {**same, "threshold_raw": ref["threshold_raw"] * (1 + 2 * gpu.THETA_TOL)}
    assert [c["pass"] for c in gpu.pair("x", off, ref)] == [True, False]
    rep = {"date": "d", "command": "c", "sections": {"correctness": [
        gpu.check("a check", 1.0, 0.5)]}, "machine": {
        "device_name": "cpu", "torch": "t", "transformers": "t", "python": "p",
        "fp32_flops": 1e12, "bf16_flops": 1e12, "matmul_n": 4}}  # fmt: skip
    assert "| a check | 1.00e+00 | 5e-01 | FAIL |" in bench("gpu").markdown(rep)


def test_gpu_benchmark_compares_saelens_where_it_is_installed(tmp_path, capsys):
    gpu = bench("gpu")
    out = tmp_path / "out"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out),
                     "--only", "training", "saelens"]) == 0  # fmt: skip
    rows = json.loads((out / "gpu.json").read_text())["sections"]["saelens"]
    assert [(r["d_in"], r["width"]) for r in rows] == [
        (32, 256),
        (32, 1024),
        (48, 256),
        (48, 1024),
    ]
    for r in rows:
        assert r["tok_s"] > 0 and r["ratio"] > 0 and 0 < r["l0"] < r["width"]
    assert "saesuite / SAELens" in capsys.readouterr().out


def test_quality_benchmark_on_synthetic_data(capsys):
    """Issue 19: both trainers on sae_lens.synthetic data, scored by its evaluator."""
    bench("quality").main(["synthetic", "--quick", "--budgets", "8192",
                           "--lens-lams", "1", "--recipes", "default run",
                           "--epochs", "2"])  # fmt: skip
    out = capsys.readouterr().out
    runs = table(out.split("Every run:")[1])
    assert [r[1] for r in runs] == [
        "SAELens (defaults)",
        "SAELens (defaults, quadratic L0 loss)",
        "saesuite (default run)",
        "saesuite (default run, 2 epochs)",
    ]
    ev = [numbers(r[6])[0] for r in runs]  # explained variance: negative is possible
    assert all(math.isfinite(v) and v <= 1 for v in ev)
    assert_measured([r[3:6] + r[7:] for r in runs], range(0, 6))  # L0 … s but EV
    assert "512 true features in 64 dimensions" in out


def test_quality_benchmark_converts_saes_both_ways_exactly():
    """What the quality benchmark scores is what each trainer trained: SAELens's SAE
    as saesuite's released form, and ours as SAELens's, give SAELens's own outputs."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    q = bench("quality_trainers")
    torch.manual_seed(0)
    lens = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=16, d_sae=64))
    with torch.no_grad():  # free decoder norms, a b_dec, spread thresholds
        lens.W_dec.mul_(torch.rand(64, 1) + 0.5)
        lens.b_dec.normal_()
        lens.b_enc.normal_(0, 0.1)
        lens.threshold.uniform_(0.0, 0.3)
    x = torch.randn(200, 16)
    ours = q.lens_as_ours(lens)
    with torch.no_grad():
        want = lens.encode(x)
        assert 0 < (want > 0).float().mean() < 1
        torch.testing.assert_close(ours.encode(x), want)
        torch.testing.assert_close(ours(x), lens.decode(want))
        back = q.to_saelens(ours)
        torch.testing.assert_close(back.encode(x), want)
        torch.testing.assert_close(back.decode(back.encode(x)), lens.decode(want))


def test_quality_benchmark_hands_saelens_its_own_options():
    """--lens-set reaches SAELens's config (typed as YAML reads them); without
    options it stays on its defaults, and a key SAELens does not know is refused by
    name."""
    q = bench("quality")
    opts = q.parse_settings(
        "jumprelu_sparsity_loss_mode=tanh,jumprelu_ste_to_input=True,"
        "pre_act_loss_coefficient=3e-6"
    )
    assert opts == {
        "jumprelu_sparsity_loss_mode": "tanh",
        "jumprelu_ste_to_input": True,
        "pre_act_loss_coefficient": 3e-6,
    }
    t = bench("quality_trainers")
    x = torch.randn(2 * t.BATCH, 16)
    sae = t.train_saelens(x, 32, 1.0, options=opts)
    assert sae.cfg.jumprelu_sparsity_loss_mode == "tanh"
    assert sae.cfg.jumprelu_ste_to_input is True
    assert sae.cfg.pre_act_loss_coefficient == 3e-6
    plain = t.train_saelens(x, 32, 1.0)
    assert plain.cfg.jumprelu_sparsity_loss_mode == "step"
    assert plain.cfg.jumprelu_ste_to_input is False
    with pytest.raises(TypeError, match="no_such_option"):
        t.train_saelens(x, 32, 1.0, options={"no_such_option": 1})
    # the command refuses it before it reads the cache or loads the model
    with pytest.raises(SystemExit, match="has no no_such_option"):
        q.main(["real", "--configfile", "/nonexistent.yaml", "--lens-set",
                "no_such_option=1,jumprelu_ste_to_input=True"])  # fmt: skip


def test_retrain_benchmark_runs_the_rules_job_under_a_try_and_refuses_bad_ones(
    tmp_path,
):
    """benchmarks/retrain.py: a try's keys reach the train job the `train` rule gets
    (a transcoder's encoder scale through spec.jobs.train_section, an SAE's not), which
    is otherwise the run's job with its checkpoint and dictionaries under the try's
    folder; a key the schema lacks, or a try that is not NAME:KEY=VALUE,..., stops the
    command by name before it reads the cache (there is none here) or the model."""
    import dataclasses

    import yaml

    from saesuite.spec.config import ConfigError
    from saesuite.spec.make_jobs import train_job
    from saesuite.spec.workflow import Workflow

    rt = bench("retrain")
    base = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    got = rt.tries(base, ["half:transcoder_encoder_init_scale=0.5,lr=2e-3"])
    cfg = got["half"]
    assert cfg["train"]["lr"] == 2e-3 and cfg["train"]["recipe"] == "saesuite"
    tc = rt.retrain_job(cfg, 9, "transcoder", tmp_path / "half")
    res = rt.retrain_job(cfg, 9, "res", tmp_path / "half")
    assert tc.train.encoder_init_scale == 0.5 and tc.train.lr == 2e-3
    assert res.train.encoder_init_scale == 0.1
    assert tc.checkpoint == str(tmp_path / "half" / "checkpoint.pt")
    saes = tmp_path / "half" / "gemma-3-270m" / "saes"
    assert [tc.out_dir(d) for d in tc.dictionaries] == [
        str(saes / f"layer_9/transcoder/width_4096/l0_{t}") for t in (20, 80)
    ]
    # the rule's job trains the layer's plain and skip-transcoders; --kind transcoder
    # retrains its plain ones alone, otherwise as the rule trains them
    run = train_job(cfg, Workflow(cfg).suite, "gemma-3-270m", 9, "mlp_in_to_mlp")
    plain = tuple(d for d in run.dictionaries if d.kind == "transcoder")
    assert {d.kind for d in run.dictionaries} == {"transcoder", "skip_transcoder"}
    assert dataclasses.replace(
        tc, checkpoint=run.checkpoint, root=run.root, dictionaries=run.dictionaries
    ) == run and tc.dictionaries == plain  # fmt: skip
    both = rt.retrain_job(cfg, 9, "mlp_in_to_mlp", tmp_path / "half")
    assert both.dictionaries == run.dictionaries
    with pytest.raises(SystemExit, match="no such dictionaries"):
        rt.retrain_job(cfg, 5, "transcoder", tmp_path / "none")
    with pytest.raises(ConfigError, match="encoder_scale"):
        rt.tries(base, ["bad:encoder_scale=1"])
    with pytest.raises(SystemExit, match="want NAME"):
        rt.tries(base, ["transcoder_encoder_init_scale=1"])
    empty = {**base, "output_root": str(tmp_path / "nothing")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(empty))
    with pytest.raises(ConfigError, match="encoder_scale"):
        rt.main(["--configfile", str(tmp_path / "c.yaml"), "--layer", "9", "--kind",
                 "res", "--try", "bad:encoder_scale=1"])  # fmt: skip


def test_threads_benchmark_prints_its_three_tables(capsys, tiny_models):
    model = str(tiny_models["gemma3"])
    bench("threads").main(["--quick", "--cores", "1", "--model", model])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    crossover = lines[: lines.index("| Adam | ms per step |")]
    adam = lines[len(crossover) : len(crossover) + 5]
    jobs = lines[len(crossover) + 5 :]
    assert len(crossover) == 4 and len(adam) == 5 and len(jobs) == 5, out
    assert_measured(table("\n".join(crossover)), range(4))
    assert [r[0] for r in table("\n".join(adam))] == ["per tensor", "foreach", "fused"]
    assert_measured(table("\n".join(adam)), range(1, 2))
    rows = table("\n".join(jobs))
    assert [r[0] for r in rows] == ["sparse", "dense", "forward"]
    assert_measured(rows, range(1, 3))


RUN_LOG = """Select jobs to execute...
Execute 2 jobs...
[Mon Dec  7 15:02:32 2026]
localrule model:
    output: results/gemma-3-270m/model.json
    log: results/logs/model/gemma-3-270m.log
    jobid: 6
    reason: Missing output files: results/gemma-3-270m/model.json
[Mon Dec  7 15:02:32 2026]
localrule corpus:
    output: results/corpus/corpus.jsonl, results/corpus/corpus.json
    jobid: 5
[Mon Dec  7 15:02:35 2026]
Finished jobid: 5 (Rule: corpus)
1 of 47 steps (2%) done
[Mon Dec  7 15:02:40 2026]
rule train:
    input: results/gemma-3-270m/activations/manifest.json
    jobid: 12
    wildcards: model=gemma-3-270m, layer=9, kind=res
[Mon Dec  7 15:03:03 2026]
Finished jobid: 6 (Rule: model)
[Mon Dec  7 15:05:10 2026]
Finished jobid: 12 (Rule: train)
"""


def test_run_benchmark_times_jobs_from_snakemakes_log_and_bounds_a_dictionary(
    tmp_path,
):
    """benchmarks/run.py (issue 36, item 10): each job from its start to its
    "Finished jobid" line; a dictionary's train bound by hand: per step the encoder
    2·B·d·w and 2·B·L0·4·d over its L0, interpolated between logged steps."""
    run = bench("run")
    jobs = run.job_times(RUN_LOG).set_index("jobid")
    assert jobs.loc[5, "rule"] == "corpus" and jobs.loc[5, "seconds"] == 3
    assert jobs.loc[6, "rule"] == "model" and jobs.loc[6, "seconds"] == 31
    assert jobs.loc[12, "rule"] == "train" and jobs.loc[12, "seconds"] == 150
    sae = tmp_path / "layer_0" / "res" / "width_16" / "l0_4"
    sae.mkdir(parents=True)
    (sae / "sae.json").write_text(json.dumps(
        {"steps": 4, "d_in": 8, "width": 16, "train": {"batch_size": 2}}))  # fmt: skip
    (sae / "train_log.jsonl").write_text(
        json.dumps({"step": 0, "l0": 10.0}) + "\n" + json.dumps({"step": 3, "l0": 4.0})
    )
    # L0 10, 8, 6, 4 over the four steps: 28 active latent-steps
    assert run.train_bound(sae) == 4 * 2 * 2 * 8 * 16 + 28 * 2 * 2 * 4 * 8


def test_clt_benchmark_times_both_decoders_at_each_depth(capsys):
    """benchmarks/clt.py --quick: a row per layer count, both paths timed."""
    bench("clt").main(["--quick"])
    rows = table(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["2", "4"]
    assert_measured(rows, range(1, 6))
