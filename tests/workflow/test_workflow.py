"""The DAG end to end on a tiny Gemma 3 model, through real Snakemake runs:
dry-run plan, corpus → tokens → activation chunks → manifest → normalisation,
checked against an independent forward pass; one deleted chunk is recomputed alone
and byte-identical; every SAE trained, evaluated (FVU and L0 against an independent
computation) and put through the format-shift check; the finished run extended by
an IT model (PT→IT transfer); a bad config fails before any job runs."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import chromium, copy_run, job_counts, load_tiny, make_config, snakemake
from safetensors.torch import load_file

from saesuite.spec.config import REPO_ROOT
from saesuite.spec.io import read_json, sha256_file
from saesuite.spec.prompts import load_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    cfg = make_config(tiny_models["gemma3"], output_root="results")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = snakemake(work, "-n")
    assert plan.returncode == 0, plan.stderr + plan.stdout
    done = snakemake(work, "--cores", "2")
    assert done.returncode == 0, done.stderr + done.stdout
    return work, plan.stdout + plan.stderr


def test_dry_run_lists_the_plan(run):
    _, plan = run
    assert job_counts(plan) == {
        "corpus": 1, "model": 1, "tokens": 1, "extract": 4,
        "manifest": 1, "normalize": 1, "train": 6, "evaluate": 4,
        "transfer_rollouts": 1, "eval_table": 1, "transfer_table": 1,
        "release": 3, "report_figures": 1, "all": 1, "total": 27,
    }  # fmt: skip


def test_chunks_hold_the_model_activations(run, tiny_models):
    work, _ = run
    out = work / "results" / "tiny"
    man = read_json(out / "activations" / "manifest.json")
    assert len(man["chunks"]) == 4 and man["n_tokens"] == 4096
    sites = [f"layer_{L}.{k}" for L in (1, 2) for k in ("att", "mlp", "res")]
    assert sorted(man["sites"]) == sorted(sites)
    chunk = load_file(out / "activations" / "chunk_00001.safetensors")
    model = load_tiny(tiny_models["gemma3"])
    ids = chunk["input_ids"].reshape(-1, 32).long()
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        chunk["layer_2.res"], hs[3].reshape(-1, 64), rtol=1e-4, atol=1e-4
    )
    assert chunk["layer_1.att"].shape == (1024, 4 * 16)
    tokens = load_file(out / "tokens" / "train.safetensors")
    assert torch.equal(tokens["input_ids"][32:64].reshape(-1), chunk["input_ids"])
    assert torch.equal(tokens["mask"][32:64].reshape(-1), chunk["mask"])


def test_normalization_matches_an_independent_computation(run):
    work, _ = run
    act = work / "results" / "tiny" / "activations"
    norm = read_json(act / "normalization.json")
    xs = [load_file(p) for p in sorted(act.glob("chunk_*.safetensors"))]
    for site in ("layer_1.mlp", "layer_2.res"):
        x = torch.cat([c[site][c["mask"]] for c in xs]).double()
        want = float(x.pow(2).sum(1).mean().sqrt())
        assert norm["scale"][site] == pytest.approx(want, rel=1e-6)
    assert norm["tokens"] == sum(int(c["mask"].sum()) for c in xs)


def test_deleted_chunk_alone_is_recomputed_identically(run, tmp_path):
    # On a copy: the recomputed chunk is newer than what was built from it, which
    # would make later runs on the shared directory rebuild those by mtime.
    work = copy_run(run[0], tmp_path / "wf")
    act = work / "results" / "tiny" / "activations"
    before = {
        p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in act.glob("chunk_*")
    }
    (act / "chunk_00002.safetensors").unlink()
    # `all` would go on to rerun what depends on the chunk by modification time
    # (Snakemake's rule, not saesuite's: the dry-run below shows it), which this test
    # does not need: the chunk alone is the target here.
    chunk = "results/tiny/activations/chunk_00002.safetensors"
    again = snakemake(work, "--cores", "2", chunk)
    assert again.returncode == 0, again.stderr
    log = again.stdout + again.stderr
    assert len(re.findall(r"rule extract:", log)) == 1
    assert "chunk=00002" in log
    after = {
        p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in act.glob("chunk_*")
    }
    for name, (mtime, digest) in before.items():
        assert after[name][1] == digest, name  # same bytes, recomputed or not
        if "00002" not in name:
            assert after[name][0] == mtime, name  # untouched
    plan = snakemake(work, "-n")
    counts = job_counts(plan.stdout + plan.stderr)
    assert "extract" not in counts and counts["manifest"] == 1 and counts["train"] == 6


def test_every_sae_of_the_suite_is_trained(run):
    work, _ = run
    saes = work / "results" / "tiny" / "saes"
    for layer in (1, 2):
        for kind in ("res", "att", "mlp"):
            summary = read_json(saes / f"layer_{layer}" / kind / "site.json")
            assert [s["value"] for s in summary["saes"]] == [8, 16]
            for s in summary["saes"]:
                folder = saes / s["path"]
                assert (folder / "sae.safetensors").exists()
                assert s["tokens"] == 20000 and s["steps"] == 78
                lines = (folder / "train_log.jsonl").read_text().splitlines()
                assert len(lines) >= 8
    assert not list((work / "results" / "tiny" / "checkpoints").glob("*.pt"))


def test_bad_config_fails_before_any_job(tmp_path, tiny_models):
    cfg = make_config(tiny_models["gemma3"], output_root="results")
    cfg["models"]["tiny"]["dtype"] = "float64"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--cores", "1")
    assert res.returncode != 0
    assert "float64" in res.stderr + res.stdout
    assert "dtype" in res.stderr + res.stdout
    assert not (tmp_path / "results").exists()


def test_eval_table_matches_an_independent_computation(run, tiny_models):
    """FVU and L0 of one SAE in the table equal a direct computation: the released
    SAE on the held-out split's activations from the tiny model."""
    import pandas as pd

    from saesuite.data.sites import capture
    from saesuite.eval.evaluate import load_released
    from saesuite.spec.sites import Site

    work, _ = run
    out = work / "results" / "tiny"
    table = pd.read_csv(out / "eval" / "table.csv")
    assert len(table) == 12 and (table["data"] == "text").all()
    assert set(table["evaluated_on"]) == {"tiny"}
    for col in ("layer", "site", "width", "value", "l0", "fvu", "delta_loss", "kl",
                "loss_recovered", "dead", "dense_latents", "cosine"):  # fmt: skip
        assert col in table and table[col].notna().all(), col
    parquet = pd.read_parquet(out / "eval" / "table.parquet")
    pd.testing.assert_frame_equal(parquet, table, check_dtype=False)

    row = table[(table.layer == 2) & (table.site == "mlp") & (table.value == 8)]
    tokens = load_file(out / "tokens" / "eval.safetensors")
    ids, mask = tokens["input_ids"].long(), tokens["mask"]
    site = Site(2, "mlp")
    x = capture(load_tiny(tiny_models["gemma3"]), ids, [site])[site][mask].double()
    sae = load_released(out / "saes" / "layer_2/mlp/width_128/l0_8").double()
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(row.fvu.iloc[0]) == pytest.approx(float(fvu), rel=1e-4)
    l0 = (f != 0).sum(1).double().mean()
    assert float(row.l0.iloc[0]) == pytest.approx(float(l0))
    sae_json = read_json(
        out / "eval" / "tiny" / "text" / "layer_2/mlp/width_128/l0_8.json"
    )
    assert sae_json["metrics"]["tokens"] == int(mask.sum())
    assert len(sae_json["metrics"]["delta_loss_by_position"]) == 32


def test_format_shift_check_is_labelled_as_such(run):
    import pandas as pd

    work, _ = run
    base = work / "results" / "transfer" / "tiny-format-shift"
    table = pd.read_csv(base / "table.csv")
    assert (table["check"] == "format-shift").all()
    assert table["check_label"].str.contains("not PT→IT").all()
    assert sorted(table["data"].unique()) == ["chat", "text"]
    assert (table["evaluated_on"] == "tiny").all() and len(table) == 24
    assert (base / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rollouts = read_json(work / "results" / "tiny" / "rollouts" / "rollouts.json")
    assert rollouts["model"] == "tiny" and rollouts["sequences"] == 16
    # where the prompts came from, and how many: two keys, neither overwriting the other
    assert rollouts["prompts"] == "saesuite:spec/prompts.txt"
    assert rollouts["n_prompts"] == len(load_prompts(None)) > 1


def test_release_folders_carry_the_measured_saes(run):
    work, _ = run
    rel = work / "results" / "release"
    assert sorted(p.name for p in rel.iterdir()) == [
        f"saesuite--saesuite-tiny-{k}" for k in ("att", "mlp", "res")
    ]
    res = rel / "saesuite--saesuite-tiny-res"
    index = read_json(res / "index.json")
    assert index["layout"] == "gemma-scope-2" and len(index["saes"]) == 4
    for row in index["saes"]:
        assert (res / row["path"] / "params.safetensors").exists()
        evaluated = read_json(
            work / "results" / "tiny" / "eval" / "tiny" / "text"
            / f"{row['trained_as']}.json"
        )  # fmt: skip
        assert row["l0"] == evaluated["metrics"]["l0"]
        assert row["path"].endswith(f"_l0_{round(row['l0'])}")
    assert sum(r["canonical"] for r in index["saes"]) == 2  # one per layer
    # The model card lists the hook point of every layer the release covers.
    card = (res / "README.md").read_text()
    for layer in (1, 2):
        hook = f"model.layers.{layer}.output"  # Gemma 3's residual stream
        assert (
            f"| {layer} | res | `{hook}` | `blocks.{layer}.hook_resid_post` |" in card
        )
    manifest = read_json(res / "release_manifest.json")
    for name, f in manifest["files"].items():
        assert sha256_file(res / name) == f["sha256"], name


def test_a_release_folder_without_its_manifest_is_not_finished(run, tmp_path):
    """The release rule promises the manifest (written last), not the folder: a
    folder emptied or left half-built by a failed rerun is planned again."""
    work = copy_run(run[0], tmp_path / "wf")
    release = work / "results/release/saesuite--saesuite-tiny-res"
    (release / "release_manifest.json").unlink()
    plan = snakemake(work, "-n")
    assert plan.returncode == 0, plan.stderr
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts == {"release": 1, "all": 1, "total": 2}


def test_publish_plans_offline_and_upload_is_opt_in(run):
    """`snakemake publish_all` writes a dry-run plan per repo (the Hub switched off,
    as it is unreachable from here); the upload switch on the command line changes
    the targets to upload records."""
    import os

    work, _ = run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"),
        "--directory", str(work), "--configfile", str(work / "config.yaml"),
        "--cores", "1", "publish_all",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    plan = read_json(work / "results/publish/saesuite--saesuite-tiny-res.plan.json")
    assert plan["mode"] == "dry-run" and plan["remote"].startswith("unreachable")
    release = work / "results/release/saesuite--saesuite-tiny-res"
    assert (
        plan["upload_files"]
        == len(read_json(release / "release_manifest.json")["files"]) + 1
    )
    assert "publish dry-run saesuite/saesuite-tiny-res" in res.stderr
    up = subprocess.run(
        [*cmd, "-n", "--config", "publish={upload: true}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "saesuite--saesuite-tiny-res.upload.json" in up.stdout


def test_the_cli_lists_and_shows_the_run(run, capsys):
    import pandas as pd

    from saesuite.cli import main

    work, _ = run
    results = work / "results"
    main(["ls", str(results), "--csv"])
    listed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    table = pd.read_csv(results / "tiny" / "eval" / "table.csv")
    assert len(listed) == len(table) == 12
    merged = listed.merge(table, on=["layer", "site", "width", "value"])
    assert (merged["l0_x"] == merged["l0_y"]).all()
    folder = results / "tiny/saes/layer_2/mlp/width_128/l0_8"
    main(["show", str(folder)])
    out = capsys.readouterr().out
    row = table[(table.layer == 2) & (table.site == "mlp") & (table.value == 8)]
    assert f"{float(row.fvu.iloc[0]):.6g}" in out and "trained on 20000 tokens" in out
    with pytest.raises(SystemExit, match="holds no sae.json"):
        main(["show", str(results)])
    with pytest.raises(SystemExit) as err:
        main(["ls", "--help"])
    assert err.value.code == 0 and "--model" in capsys.readouterr().out


REPORT_FIGURES = [
    f"{site}/{name}"
    for site in ("att", "mlp", "res")
    for name in (
        "pareto_delta_loss_width_128", "pareto_fvu_width_128", "layers_width_128",
        "frequency_layer_1_width_128", "position_layer_1_width_128",
        "training_layer_1_width_128",
    )
]  # fmt: skip


def test_report_figures_and_tables_are_written(run):
    """Every figure (PNG for the report, SVG beside it) and table is a readable,
    non-blank file, titled with the model."""
    from matplotlib.image import imread

    work, _ = run
    figures = work / "results/tiny/report/figures"
    found = sorted(
        str(p.relative_to(figures).with_suffix("")) for p in figures.rglob("*.png")
    )
    assert found == sorted(REPORT_FIGURES)
    for name in REPORT_FIGURES:
        png = imread(figures / f"{name}.png")
        assert png.shape[0] >= 400 and png.shape[1] >= 600, name
        assert png[..., :3].std() > 0.05, f"{name}: blank"
        svg = (figures / f"{name}.svg").read_text()
        assert "<svg" in svg and "tiny · " in svg, name
    table = (work / "results/tiny/report/tables/evaluation.html").read_text()
    assert table.count("</tr>") == 1 + 12  # the header and 12 SAEs
    # the health table: a row per SAE, its training columns from the SAE's log and
    # its held-out ones from its evaluation
    text = (work / "results/tiny/report/tables/health.html").read_text()
    head = re.findall(r"<th>(.*?)</th>", text)
    cells = [re.findall(r"<td>(.*?)</td>", tr, re.S)
             for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", text, re.S)]  # fmt: skip
    rows = [dict(zip(head, c, strict=True)) for c in cells if c]
    assert len(rows) == 12
    sae = "layer_1/res/width_128/l0_8"
    lines = (work / "results/tiny/saes" / sae / "train_log.jsonl").read_text()
    log = [json.loads(x) for x in lines.splitlines()]
    ev = read_json(work / "results/tiny/eval/tiny/text" / f"{sae}.json")
    row = next(r for r in rows if (r["layer"], r["site"], r["sparsity"]) ==
               ("1", "res", "target L0 8"))  # fmt: skip
    assert int(row["dead (training)"]) == log[-1]["dead"]
    assert float(row["initial FVU"]) == pytest.approx(log[0]["fvu"], rel=1e-3)
    assert int(row["dead (held-out)"]) == ev["metrics"]["dead"]


@pytest.fixture(scope="module")
def report(run):
    work, _ = run
    out = snakemake(work, "--report", "results/report.html")
    assert out.returncode == 0, out.stderr
    return work / "results/report.html"


def embedded(html: str, path: str) -> bytes:
    """The bytes of `path` as the report embeds it (a base64 data URI)."""
    import base64

    at = html.index(f'"{path}": {{"name"')
    uri = html.index('"data_uri": "data:', at)
    payload = html[html.index(";base64,", uri) + 8 : html.index('"', uri + 13)]
    return base64.b64decode(payload)


def test_report_embeds_every_figure_and_table(report):
    html = report.read_text()
    results = report.parent
    files = [f"tiny/report/figures/{name}.png" for name in REPORT_FIGURES]
    files += ["tiny/report/tables/evaluation.html"]
    files += [f"transfer/tiny-format-shift/{f}" for f in ("transfer.png", "table.html")]
    for f in files:
        data = embedded(html, f"results/{f}")
        assert data and data == (results / f).read_bytes(), f
    assert html.count('"data_uri": "data:image/png') == len(REPORT_FIGURES) + 1


def test_report_renders_in_headless_chromium(report, tmp_path):
    """The report is a JavaScript app: Chromium runs it, and the rendered page (the
    DOM after scripts, and a screenshot) shows the navigation with both categories."""
    from matplotlib.image import imread

    flags = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
        "--virtual-time-budget=10000",
    ]  # fmt: skip
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    for i, action in enumerate([f"--screenshot={shot}", "--dump-dom"]):
        profile = f"--user-data-dir={tmp_path / f'profile{i}'}"
        done = subprocess.run([*flags, profile, action, url], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    rendered = done.stdout.split('id="app"', 1)[1]
    for label in ("Workflow", "Statistics", "tiny", "transfer"):
        assert f"<span>{label}</span>" in rendered, label
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1000, 1400)
    ink = (pixels.mean(axis=2) < 0.5).mean()  # dark text, lines and graph nodes
    assert ink > 0.005, f"screenshot nearly blank ({ink:.2%} dark pixels)"


def test_pt_to_it_workflow(run, tiny_models, tiny_it_model, tokenizer, tmp_path):
    """The finished run, extended by a tiny IT model fine-tuned from its PT model
    (with SAEs of its own at layer 1, trained on chat-wrapped text): Snakemake adds
    only the IT model's jobs and the PT→IT evaluations; PT-trained and IT-trained
    SAEs land side by side on the IT model's data, and the losses are the IT model's."""
    import pandas as pd

    from saesuite.data.models import GEMMA_CHAT_TEMPLATE
    from saesuite.data.tokens import chat_wrap

    work = copy_run(run[0], tmp_path / "wf")
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["models"]["tiny-it"] = {
        "source": str(tiny_it_model), "role": "it", "base": "tiny", "chat": True,
    }  # fmt: skip
    cfg["suite"][0]["models"] = ["tiny"]
    it_group = {"models": ["tiny-it"], "layers": [1], "sites": ["res", "att"]}
    cfg["suite"].append({**cfg["suite"][0], **it_group})
    # Gemma Scope 2's IT SAEs too: the PT SAEs at layer 1 fine-tuned on the IT model
    cfg["transfer"]["finetune_share"] = 0.25
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(work, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    ran = job_counts(res.stdout + res.stderr)
    assert ran["train"] == 2 and ran["extract"] == 4  # the IT model's only
    assert ran["finetune"] == 1  # layer 1: its res, att and mlp ladders in one job
    # PT, IT and fine-tuned SAEs through the IT model share one evaluate job per
    # data set (the PT model's own jobs hold what they held: not rerun)
    assert ran["evaluate"] == 2
    shared = read_json(work / "results" / "tiny-it" / "eval_passes" / "chat" /
                       "layer_1.json")  # fmt: skip
    assert sorted(Counter(e["trained_on"] for e in shared["saes"]).items()) == [
        ("tiny", 6), ("tiny-ft-tiny-it", 6), ("tiny-it", 4)
    ]  # fmt: skip
    out = work / "results"
    table = pd.read_csv(out / "transfer" / "tiny-to-tiny-it" / "table.csv")
    assert (table["check"] == "pt->it").all()
    groups = table.groupby(["trained_on", "evaluated_on", "data"]).size().to_dict()
    assert groups == {
        ("tiny", "tiny", "text"): 6,
        ("tiny", "tiny-it", "text"): 6,
        ("tiny", "tiny-it", "chat"): 6,
        ("tiny-it", "tiny-it", "text"): 4,
        ("tiny-it", "tiny-it", "chat"): 4,
        ("tiny-ft-tiny-it", "tiny-it", "text"): 6,
        ("tiny-ft-tiny-it", "tiny-it", "chat"): 6,
    }
    assert set(table[table.trained_on == "tiny"]["saes"]) == {"PT-trained"}
    assert set(table[table.trained_on == "tiny-it"]["saes"]) == {"IT-trained"}
    tuned = table[table.trained_on == "tiny-ft-tiny-it"]
    assert set(tuned["saes"]) == {"PT, fine-tuned on IT"}
    assert set(tuned["train_tokens"]) == {5000}  # 0.25 of the PT SAEs' 20,000
    info = read_json(out / "tiny-ft-tiny-it" / "saes" / "layer_1" / "res" /
                     "width_128" / "l0_8" / "sae.json")  # fmt: skip
    assert info["finetuned_from"]["model"] == "tiny"
    assert info["finetune_data"] == "chat-formatted training text through tiny-it"
    # fine-tuned on the IT model's chat-formatted text, they reconstruct its chat
    # rollouts better than the PT SAEs they started from, SAE for SAE
    chat = table[(table.data == "chat") & (table.evaluated_on == "tiny-it")]
    fvu = chat.pivot_table(index="path", columns="trained_on", values="fvu")
    assert (fvu["tiny-ft-tiny-it"] < fvu["tiny"]).mean() >= 0.5, fvu
    assert set(table["layer"]) == {1}  # compared where the IT model has SAEs
    # one clean pass per data set through the IT model, whatever SAEs ran on it
    through_it = table[table.evaluated_on == "tiny-it"]
    assert through_it.groupby("data")["clean_loss"].nunique().to_dict() == {
        "chat": 1, "text": 1
    }  # fmt: skip
    assert (
        read_json(out / "tiny-it" / "rollouts" / "rollouts.json")["model"] == "tiny-it"
    )
    # Paired now: the rollouts and transfer table that ran are the IT model's and
    # the pair's; the format-shift check of the PT model is no longer planned.
    assert ran["transfer_rollouts"] == 1 and ran["transfer_table"] == 1
    assert "tiny-format-shift" not in res.stdout + res.stderr

    # The IT model's held-out split is chat-wrapped, user prefix masked.
    prefix, _ = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    it_tokens = load_file(out / "tiny-it" / "tokens" / "eval.safetensors")
    assert it_tokens["input_ids"][0, 1 : 1 + len(pre)].tolist() == pre

    # PT SAEs on IT text: the clean loss is the IT model's on that split.
    ids = it_tokens["input_ids"][:8].long()  # loss_tokens 256 / context 32
    m = it_tokens["mask"][:8]
    pred = m[:, :-1] & m[:, 1:]

    def loss_of(model_dir):
        with torch.no_grad():
            logits = load_tiny(model_dir)(input_ids=ids).logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
        )
        return float(ce[pred].mean())

    row = table[(table.trained_on == "tiny") & (table.evaluated_on == "tiny-it")]
    clean = row[row.data == "text"]["clean_loss"]
    assert clean.to_numpy() == pytest.approx(loss_of(tiny_it_model), rel=1e-5)
    assert abs(loss_of(tiny_models["gemma3"]) - loss_of(tiny_it_model)) > 0.05
    assert (out / "transfer" / "tiny-to-tiny-it" / "transfer.png").stat().st_size > 0


def test_every_output_honours_the_umask(run):
    """Files 0666 and folders 0777 minus the umask, weights included (safetensors'
    save_file makes its files 0600; mkdtemp makes folders 0700)."""
    import os

    work, _ = run
    umask = os.umask(0)
    os.umask(umask)
    wrong = [
        (str(p.relative_to(work)), oct(p.stat().st_mode & 0o777))
        for p in (work / "results").rglob("*")
        if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask
    ]
    assert not wrong, wrong[:10]


def test_a_fresh_clone_plans_nothing_and_a_parameter_change_reruns_its_jobs(
    run, tmp_path
):
    """Several checkouts, one finished suite (issue 18, item 9): a checkout made
    after the run (every rules/scripts/*.py newer than the results) plans nothing;
    a changed training parameter reruns the train jobs and what is built from them,
    nothing upstream."""
    work = copy_run(run[0], tmp_path / "wf")
    clone = tmp_path / "clone"
    for part in ("rules", "config", "envs"):
        shutil.copytree(REPO_ROOT / part, clone / part, copy_function=shutil.copy)
    shutil.copy(REPO_ROOT / "Snakefile", clone / "Snakefile")
    summary = next((work / "results" / "tiny" / "saes").glob("layer_*/*/site.json"))
    assert (clone / "rules/scripts/train.py").stat().st_mtime > summary.stat().st_mtime

    def plan(*args: str, profile: bool = True) -> str:
        local = ["--profile", str(clone / "config/profiles/local")] if profile else []
        out = snakemake(work, "-n", *local, *args, snakefile=clone / "Snakefile")
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    assert "Nothing to be done" in plan()
    # Snakemake's default triggers (its code trigger on) would rerun every script rule.
    code = plan(profile=False)
    assert "Code has changed since last execution" in code
    assert job_counts(code)["extract"] == 4

    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg.setdefault("train", {})["lr"] = 1e-4
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    changed = plan()
    assert "Params have changed since last execution" in changed
    # the train jobs and what is built from them; no corpus, tokens, extraction,
    # manifest or normalisation, and no rollouts (they do not read the SAEs)
    assert job_counts(changed) == {
        "train": 6, "evaluate": 4, "eval_table": 1, "release": 3,
        "transfer_table": 1, "report_figures": 1, "all": 1, "total": 17,
    }, job_counts(changed)  # fmt: skip


def test_the_local_and_slurm_profiles_rerun_on_the_same_triggers():
    profiles = REPO_ROOT / "config" / "profiles"
    triggers = {
        p.parent.name: yaml.safe_load(p.read_text())["rerun-triggers"]
        for p in profiles.glob("*/config.yaml")
    }
    assert set(triggers) == {"local", "slurm"}
    assert all(
        t == ["mtime", "params", "input", "software-env"] for t in triggers.values()
    )


def test_a_rebuild_compares_identical_and_another_seed_is_measured(run, tmp_path):
    """Issue 36, item 2: the tiny workflow built again from nothing in another
    folder gives the same bytes for every artefact kind (`saesuite compare` exits
    0 and says so); with another seed the chunks and SAEs differ, and each
    dictionary's metric deltas are those of its two evaluation JSONs."""
    from saesuite.cli import main
    from saesuite.report.compare import TOLERANCES, compare, within

    first = run[0] / "results"
    cfg = yaml.safe_load((run[0] / "config.yaml").read_text())

    def rebuild(name: str, **changes) -> Path:
        work = tmp_path / name
        work.mkdir()
        (work / "config.yaml").write_text(yaml.safe_dump({**cfg, **changes}))
        done = snakemake(work, "--cores", "2")
        assert done.returncode == 0, done.stderr[-3000:]
        return work / "results"

    again = rebuild("again")
    table, deltas, verdict = compare(first, again)
    assert verdict == "identical" and len(deltas) == 0, table
    # every kind was built and compared (the tiny suite builds no dashboards)
    assert set(table[table["files"] == 0]["artefact"]) == {"dashboards"}, table
    out = subprocess.run(
        [sys.executable, "-c", "from saesuite.cli import main; main()", "compare",
         str(first), str(again)], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.rstrip().endswith("identical"), out

    other = rebuild("seed", seed=cfg.get("seed", 0) + 1)
    table, deltas, verdict = compare(first, other)
    by = table.set_index("artefact")
    assert by.loc["activation chunks", "differ"] == by.loc["activation chunks", "files"]
    assert by.loc["dictionary weights", "differ"] > 0
    evals = sorted(
        str(p.relative_to(first)).removesuffix(".json")
        for p in first.glob("*/eval/*/*/**/*.json")
    )
    assert sorted(deltas["evaluation"]) == evals
    row = deltas.iloc[0]
    ma = read_json(first / f"{row['evaluation']}.json")["metrics"]
    mb = read_json(other / f"{row['evaluation']}.json")["metrics"]
    for k in TOLERANCES:
        assert row[f"Δ {k}"] == pytest.approx(mb[k] - ma[k])
    ok = all(within(k, ma[k], mb[k]) for k in TOLERANCES)
    assert row["within tolerance"] == ok
    assert verdict == ("within tolerance" if deltas["within tolerance"].all()
                       else "different")  # fmt: skip
    with pytest.raises(SystemExit):  # a folder that is not there
        main(["compare", str(first), str(tmp_path / "nothing")])
