"""The typed jobs and the workflow's plan (saesuite.spec.jobs, spec.workflow) and
each job's resources (cluster.resources.JobResources): what rules/common.smk hands
the rules, against hand computations on a two-model, two-layer config."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import make_config

from saesuite.cluster.memory import train_flops
from saesuite.cluster.resources import (
    BASE_MB,
    SMALL_JOB_MINUTES,
    JobResources,
    request,
    train_mem_mb,
)
from saesuite.spec import jobs, make_jobs, paths
from saesuite.spec.config import load_config
from saesuite.spec.sites import Site
from saesuite.spec.workflow import Workflow


@pytest.fixture
def wf(tmp_path) -> Workflow:
    cfg = make_config("google/gemma-2-2b", output_root=str(tmp_path / "out"),
                      scratch_root=str(tmp_path / "scratch"))  # fmt: skip
    cfg["suite"][0]["layers"] = [1, 3]
    cfg["suite"][0]["sites"] = ["res", "att"]
    return Workflow(load_config(cfg))


def test_a_train_job_covers_one_site_and_travels_as_json(wf):
    params = wf.train_params("tiny", 3, "att")
    # where the activations are is not a param: moving the scratch reruns nothing
    assert not set(params) & set(jobs.TrainJob.LOCATION)
    job = jobs.TrainJob.from_dict(json.loads(json.dumps(params)))
    specs = wf.site_specs("tiny", 3, "att")
    assert len(job.dictionaries) == len(specs) > 0
    assert job.dictionaries == tuple(specs)  # the suite's own identities
    att = (Site(3, "att"),)
    for d in job.dictionaries:
        assert (d.kind, d.reads, d.writes) == ("sae", att, att)
        assert job.out_dir(d) == f"{wf.root}/tiny/saes/{d.path}"
    scratch = wf.scratch
    here = job.located(
        paths.manifest(scratch, "tiny"), paths.normalization(scratch, "tiny")
    )
    assert here.checkpoint == f"{scratch}/tiny/checkpoints/layer_3.att.pt"
    assert here == make_jobs.train_job(wf.config, wf.suite, "tiny", 3, "att")
    elsewhere = job.located("/fast/tiny/activations/manifest.json", "/fast/n.json")
    assert elsewhere.checkpoint == "/fast/tiny/checkpoints/layer_3.att.pt"
    assert elsewhere.fingerprint() == here.fingerprint()
    assert replace(here, seed=1).fingerprint() != here.fingerprint()
    assert jobs.TrainJob.from_dict(here.to_dict()) == here


def test_a_layers_plain_and_skip_transcoders_train_in_one_job(tmp_path):
    """The two kinds read and write the same sites: one job trains both on the same
    batches from one read of the cache, with one checkpoint, apart from the MLP's
    SAE job (which reads another site)."""
    cfg = make_config("google/gemma-2-2b", output_root=str(tmp_path / "out"))
    base = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"],
            "kind": "transcoder"}  # fmt: skip
    sae = {**base, "kind": "sae"}
    cfg["suite"] = [sae, base, {**base, "skip": "affine"}]
    wf = Workflow(load_config(cfg))
    where = (
        paths.manifest(wf.scratch, "tiny"),
        paths.normalization(wf.scratch, "tiny"),
    )
    assert wf.train_families("tiny") == [(1, "mlp"), (1, "mlp_in_to_mlp")]
    job = jobs.TrainJob.from_dict(wf.train_params("tiny", 1, "mlp_in_to_mlp"))
    assert {d.kind for d in job.dictionaries} == {"skip_transcoder", "transcoder"}
    ckpt = job.located(*where).checkpoint
    assert ckpt == f"{wf.scratch}/tiny/checkpoints/layer_1.mlp_in_to_mlp.pt"
    sae_job = jobs.TrainJob.from_dict(wf.train_params("tiny", 1, "mlp"))
    assert {d.kind for d in sae_job.dictionaries} == {"sae"}
    assert sae_job.located(*where).checkpoint != ckpt


def test_every_job_round_trips_through_json(wf):
    built = [
        make_jobs.eval_job(wf.config, wf.layer_specs("tiny", 1), "tiny", "text", 1),
        make_jobs.rollouts_job(wf.config, "tiny"),
        *wf.releases.values(),
        *(make_jobs.publish_job(wf.config, r) for r in wf.releases.values()),
    ]
    for job in built:
        again = type(job).from_dict(json.loads(json.dumps(job.to_dict())))
        assert again == job


def test_the_evaluate_job_holds_the_layer_and_the_release_its_bytes(wf):
    ev = jobs.EvalJob.from_dict(wf.eval_params("tiny", "chat", 1))
    assert {m.input_site for m in ev.members} == {"layer_1.res", "layer_1.att"}
    assert len(ev.members) == len(wf.layer_specs("tiny", 1))
    assert all(m.out.startswith(f"{wf.root}/tiny/eval/tiny/chat/layer_1/")
               for m in ev.members)  # fmt: skip
    # one repo per site; float32 W_enc + W_dec: gemma-2-2b res 2304, att 8 × 256
    att = next(r for r in wf.releases.values() if r.repo.endswith("-att"))
    assert att.n_bytes == sum(2 * 2048 * m.dictionary.width * 4 for m in att.members)
    assert att.layers == [1, 3]
    pub = jobs.PublishJob.from_dict(wf.publish_params(next(iter(wf.releases))))
    assert pub.upload is False and "SAEs of tiny" in pub.message


def test_final_targets_name_every_stage(wf):
    out = wf.final_outputs()
    assert len(set(out)) == len(out)
    assert sum(f.endswith("/site.json") for f in out) == 4  # 2 layers × 2 sites
    chunks = [f for f in out if "/activations/chunk_" in f]
    assert chunks and all(f.startswith(wf.scratch) for f in chunks)
    assert len(wf.releases) == 2 and all(paths.release_manifest(wf.root, r) in out
                                         for r in wf.releases)  # fmt: skip


def test_job_resources_are_the_formulas_computed_once(wf):
    res = JobResources(wf)
    w = {"model": "tiny", "layer": "3", "kind": "att"}
    got = res("train", w)
    specs = wf.site_specs("tiny", 3, "att")
    want = request(wf.config, "train", train_mem_mb(wf.config, specs, 2048),
                   train_flops(specs, 2048), 1)  # fmt: skip
    assert got == want and res("train", dict(w)) is got  # computed once per job
    assert set(res.keys("train")) == set(got)
    small = res("eval_table", {"model": "tiny"})
    assert small == request(wf.config, "eval_table", 2 * BASE_MB,
                            minutes=SMALL_JOB_MINUTES)  # fmt: skip
    name = next(iter(wf.releases))
    publish = res("publish", {"release": name})
    assert publish["runtime"] >= wf.config["resources"]["min_runtime"]


def test_dashboards_layers_choose_the_jobs_and_the_release_folders_that_carry_them(
    tmp_path,
):
    """Issue 17: dashboards.layers restricts the dashboards jobs to those layers, the
    release carries a dashboard only for their dictionaries (and waits only on their
    jobs), and a layer the suite lacks is refused, naming the key."""
    from saesuite.spec.config import ConfigError

    cfg = make_config("google/gemma-2-2b", output_root=str(tmp_path / "out"))
    cfg["suite"][0]["layers"] = [1, 3]
    cfg["dashboards"] = {"enabled": True, "layers": [3]}
    wf = Workflow(load_config(cfg))
    assert wf.dashboard_layers() == [paths.dashboards_layer(wf.root, "tiny", 3)]
    assert wf.dashboard_layers() == [f for f in wf.final_outputs()
                                     if "/dashboards/" in f]  # fmt: skip
    for name, job in wf.releases.items():
        with_dash = {m.dictionary.layer for m in job.members if m.dashboard}
        assert with_dash == {3} and {m.dictionary.layer for m in job.members} == {1, 3}
        deps = [f for f in wf.release_inputs(name) if "/dashboards/" in f]
        assert deps == wf.dashboard_layers()
    cfg["dashboards"]["layers"] = None  # every layer
    assert len(Workflow(load_config(cfg)).dashboard_layers()) == 2
    cfg["dashboards"]["layers"] = [2, 3]
    with pytest.raises(ConfigError, match=r"'dashboards.layers'.*\[2\]"):
        load_config(cfg)
    cfg["dashboards"]["enabled"] = False
    assert Workflow(load_config(cfg)).dashboard_layers() == []


def test_pt_and_fine_tuned_saes_share_one_evaluate_job_per_model_data_layer(tmp_path):
    """With fine-tuning (format shift: the PT model is its own target), each evaluate
    job holds the layer's PT and fine-tuned dictionaries on one data set, each
    writing its JSON under its own model, and the resources count all of them."""
    cfg = make_config("google/gemma-2-2b", output_root=str(tmp_path / "out"))
    cfg["suite"][0]["layers"] = [1, 3]
    cfg["transfer"] = {"finetune_share": 0.5}
    wf = Workflow(load_config(cfg))
    tuned = "tiny-ft-tiny"
    assert sorted(wf.eval_passes) == [("tiny", d, L) for d in ("chat", "text")
                                      for L in (1, 3)]  # fmt: skip
    for (lm, data, layer), specs in wf.eval_passes.items():
        want = wf.layer_specs("tiny", layer) + wf.layer_specs(tuned, layer)
        assert sorted(map(repr, specs)) == sorted(map(repr, want))
        ev = jobs.EvalJob.from_dict(wf.eval_params(lm, data, layer))
        assert len({m.key for m in ev.members}) == len(want)  # keys unique per job
        assert {m.out.split("/eval/")[0] for m in ev.members} == {
            f"{wf.root}/tiny", f"{wf.root}/{tuned}"
        }  # fmt: skip
    # the PT model's own table reads the same jobs
    assert wf.model_eval_layers("tiny") == [paths.eval_pass(wf.root, "tiny", "text", L)
                                            for L in (1, 3)]  # fmt: skip


def test_transcoders_start_from_their_own_encoder_scale_and_saes_jobs_stay(tmp_path):
    """train.transcoder_encoder_init_scale reaches the transcoder jobs (plain and skip,
    trained and fine-tuned) as their encoder_init_scale, and no SAE job: an SAE job's
    parameters are those of a config without the key, so setting it reruns only
    transcoders. null leaves every job at encoder_init_scale."""
    from saesuite.sae.member import Member

    cfg = make_config("google/gemma-2-2b", output_root=str(tmp_path / "out"))
    sae = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    tc = {**sae, "kind": "transcoder"}
    cfg["suite"] = [sae, tc, {**tc, "skip": "affine"}]
    cfg["transfer"] = {"finetune_share": 0.5}
    kinds = ("mlp", "mlp_in_to_mlp")

    def scales(train: dict) -> tuple[dict, dict[str, float]]:
        wf = Workflow(load_config({**cfg, "train": train}))
        params = {k: wf.train_params("tiny", 1, k) for k in kinds}
        # resolved into encoder_init_scale, so no job's params hold it
        assert all(p["train"]["transcoder_encoder_init_scale"] is None
                   for p in params.values())  # fmt: skip
        got = {k: p["train"]["encoder_init_scale"] for k, p in params.items()}
        tuned = jobs.FinetuneJob.from_dict(wf.finetune_params("tiny-ft-tiny", 1))
        assert {
            t.dictionaries[0].job: t.train.encoder_init_scale for t in tuned.trains
        } == got  # fmt: skip
        return params, got

    ours, got = scales({"recipe": "saesuite"})
    assert got == {"mlp": 0.1, "mlp_in_to_mlp": 1.0}
    plain, got = scales({"recipe": "saesuite", "transcoder_encoder_init_scale": None})
    assert got == dict.fromkeys(kinds, 0.1)
    assert plain["mlp"] == ours["mlp"]  # the SAE job is untouched by the key
    assert scales({"transcoder_encoder_init_scale": 0.5})[1] == {
        "mlp": 1.0, "mlp_in_to_mlp": 0.5}  # fmt: skip
    # the trainer builds the transcoder with it: W_enc = 1.0·(unit rows)ᵀ
    job = jobs.TrainJob.from_dict(ours["mlp_in_to_mlp"])
    d = job.dictionaries[0]
    m = Member(d, 16, job.train, seed=0, device="cpu")
    torch.testing.assert_close(m.sae.W_enc.norm(dim=0), torch.ones(d.width))
    from saesuite.spec.config import ConfigError

    with pytest.raises(ConfigError, match="transcoder_encoder_init_scale"):
        load_config({**cfg, "train": {"transcoder_encoder_init_scale": 0}})
