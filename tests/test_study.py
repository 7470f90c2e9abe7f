"""vmamba study: plans, the runner (skip, resume, fine-tune), the report, the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vmamba.study import make_plan, run_study
from vmamba.study.analyses import cross_ratio
from vmamba.study.plans import PLANS, Plan, recipe
from vmamba.study.report import mean_std
from vmamba.study.runner import run_key



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One Pathfinder cache for the module (the mini set is generated once)."""
    from vmamba.ops import scan_cpu

    scan_cpu.load_extension()  # from the usual cache: under $VMAMBA_CACHE=tmp it would compile again (20 s)
    return tmp_path_factory.mktemp("cache")


def test_plans_cover_the_issue_and_check_their_arguments():
    assert list(PLANS) == ["scan", "peers", "resolution", "erf", "components", "transfer"]
    scan = make_plan("scan", "quick")
    assert list(scan.configs) == ["cross2d", "bidi", "unidi"]
    assert [c["model_args"]["scan_mode"] for c in scan.configs.values()] == ["cross2d", "bidi", "unidi"]
    assert scan.seeds == (0, 1) and len(scan.runs()) == 6
    assert make_plan("scan").seeds == (0, 1, 2)  # full
    comp = make_plan("components", "quick", seeds=3)
    assert len(comp.configs) == 6 and comp.seeds == (0, 1, 2)
    changed = [{k: v for k, v in c["model_args"].items() if comp.configs["base"]["model_args"].get(k) != v}
               for c in comp.configs.values()]
    assert changed[0] == {} and all(len(c) == 1 for c in changed[1:])  # one factor at a time
    with pytest.raises(ValueError, match="unknown study plan 'scna'"):
        make_plan("scna")
    with pytest.raises(ValueError, match="unknown budget 'tiny'"):
        make_plan("scan", "tiny")
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        make_plan("scan", seeds=0)


def test_transfer_plan_fine_tunes_from_the_source():
    plan = make_plan("transfer", "quick")
    src, scratch, tuned = plan.configs
    assert plan.configs[src]["data"] == "fashion-mnist-subset" and plan.recipe["data"] == "pathfinder32"
    assert plan.configs[tuned]["init_from"] == src and "init_from" not in plan.configs[scratch]


def test_recipe_on_other_data():
    folder = recipe("full", "/data/imagenet", img_size=224)
    assert (folder["in_chans"], folder["mean"][0], folder["crop_pct"]) == (3, 0.485, 0.875)
    assert recipe("quick", "fashion-mnist")["img_size"] == 28


def test_run_key_is_stable_and_tracks_what_a_run_computes():
    cfg = dict(model="m", lr=1e-3, seed=0, out="a", threads=1)
    assert run_key("d_state=4", cfg) == run_key("d_state=4", dict(cfg, seed=3, out="b", threads=2))
    assert run_key("d_state=4", cfg) != run_key("d_state=4", dict(cfg, lr=2e-3))
    assert run_key("source: fashion-mnist", cfg).startswith("source-fashion-mnist-")


def test_cross_ratio_separates_a_cross_from_a_blob():
    yy, xx = np.mgrid[:64, :64] - 32
    blob = np.exp(-(yy ** 2 + xx ** 2) / 400.0)
    cross = blob + np.exp(-yy ** 2 / 2.0) + np.exp(-xx ** 2 / 2.0)
    assert cross_ratio(blob) == pytest.approx(1.0, abs=0.15)
    assert cross_ratio(cross) > 2
    local = np.zeros((64, 64))
    local[30:35, 30:35] = 1
    assert np.isnan(cross_ratio(local))  # no mass on the ring: undefined, left out of means
    dust = local + 1e-12 * (np.abs(yy) == np.abs(xx))  # float dust on the diagonals only: still local
    assert np.isnan(cross_ratio(dust))


def test_erf_size_has_a_centre_cell():
    from vmamba.study.analyses import erf_size

    assert erf_size(32) == 160 and erf_size(224) == 928 and erf_size(8) == 32


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == dict(mean=2.0, std=1.0, n=3)
    assert mean_std([5.0, None]) == dict(mean=5.0, std=0.0, n=1)
    assert mean_std([])["mean"] is None
    assert mean_std([2.0, float("nan"), 4.0])["mean"] == 3.0


def _tiny_plan(analyses=("flops", "erf", "erf_init", "resolution"), backend: str | None = None) -> Plan:
    """Two runs of a tiny VMamba, the second fine-tuned from the first. ``backend="torch"`` for the
    study's worker processes: under the tests' $VMAMBA_CACHE they would compile the CPU kernel anew."""
    r = recipe("micro")
    r.update(epochs=1, max_steps_per_epoch=2, batch_size=16)
    base = dict(model="vmamba_tiny_s1l8", model_args=dict(dims=8, depths=[1, 1, 1, 1]))
    if backend:
        base["model_args"]["scan_backend"] = backend
    configs = {"a": base, "b": dict(base, init_from="a")}
    return Plan("tiny", "test plan", "does it run?", r, configs, (0,), analyses, "micro")


@pytest.mark.slow
def test_study_runs_reports_skips_and_resumes(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("VMAMBA_CACHE", str(cache))
    out, runs = tmp_path / "report", tmp_path / "runs"
    report = run_study(_tiny_plan(), out=out, runs=runs, threads=1)
    text = report.read_text()
    assert "| `a` |" in text and "| `b` |" in text and "+-" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["summary"]["a"]["top1"]["n"] == 1 and len(doc["runs"]) == 2
    assert {p for p in doc["plots"]} == {"accuracy.png", "erf_init.png", "erf.png", "resolution.png"}
    assert all((out / p).stat().st_size > 1000 for p in doc["plots"])
    assert [r["size"] for r in doc["summary"]["a"]["resolution"]] == [32, 64, 96, 128]
    for run in doc["runs"]:  # ordinary training runs
        assert {"last.pt", "best.pt", "model.safetensors", "metrics.jsonl", "erf.npy"} <= {
            p.name for p in Path(run["run_dir"]).iterdir()}
    tuned = json.loads((Path(doc["runs"][1]["run_dir"]) / "config.json").read_text())
    assert tuned["model"].endswith("pretrained") and Path(tuned["model"]).is_dir()  # fine-tuned from a's run
    log = capsys.readouterr().out
    assert "[study tiny 1/2] a seed 0: training" in log and "ETA" in log

    # a rerun trains nothing
    import vmamba.train

    monkeypatch.setattr(vmamba.train, "train", lambda cfg, **kw: pytest.fail("a finished run was trained again"))
    run_study(_tiny_plan(("flops",)), out=out, runs=runs)  # the analyses are not part of a run's identity
    assert "finished earlier, skipped training" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setenv("VMAMBA_CACHE", str(cache))

    # a run cut before it finished resumes from its last.pt
    cut = Path(doc["runs"][0]["run_dir"])
    (cut / "study.json").unlink()
    run_study(_tiny_plan(("flops",)), out=out, runs=runs, threads=1)
    log = capsys.readouterr().out
    assert "a seed 0: resuming" in log and "resumed from" in log
    assert json.loads((out / "results.json").read_text())["runs"][0]["test_acc1"] == doc["runs"][0]["test_acc1"]


def test_resolve_jobs():
    from vmamba.study.runner import resolve_jobs

    assert resolve_jobs(1, 0) == (1, 0)  # one after another: torch's default threads
    assert resolve_jobs(2, 0) == (2, 1)  # at once: one thread each unless told
    assert resolve_jobs(0, 0, "cpu", cores=2) == (2, 1)  # automatic: cores // threads
    assert resolve_jobs(0, 2, "cpu", cores=8) == (4, 2)
    assert resolve_jobs(0, 4, "cpu", cores=2) == (1, 4)
    assert resolve_jobs(0, 0, "cuda:0", cores=16) == (1, 0)  # one GPU: one run at a time
    with pytest.raises(ValueError, match=r"jobs must be an integer >= 0 \(0: automatic\), got -1"):
        resolve_jobs(-1, 0)
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        resolve_jobs(1, -2)


def _weights(run: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run["run_dir"]) / "model.safetensors"))


@pytest.mark.slow
def test_parallel_runs_match_the_serial_runner(tmp_path, cache, monkeypatch, capsys):
    import multiprocessing

    import torch

    monkeypatch.setenv("VMAMBA_CACHE", str(cache))
    plan = _tiny_plan(("flops",), backend="torch")
    plan.seeds = (0, 1)  # a (2 seeds), then b fine-tuned from a's run of the same seed
    run_study(plan, out=tmp_path / "serial", runs=tmp_path / "runs1", threads=1, jobs=1)
    capsys.readouterr()
    run_study(plan, out=tmp_path / "parallel", runs=tmp_path / "runs2", threads=1, jobs=2)
    log = capsys.readouterr().out
    serial, parallel = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("serial", "parallel"))
    assert parallel["jobs"] == 2 and parallel["threads"] == 1
    runs1, runs2 = serial["runs"], parallel["runs"]
    assert [(r["label"], r["seed"], r["test_acc1"]) for r in runs1] == [(r["label"], r["seed"], r["test_acc1"])
                                                                        for r in runs2]
    for one, two in zip(runs1, runs2):  # the same computation: the same weights
        w1, w2 = _weights(one), _weights(two)
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    for seed, run in zip((0, 1), runs2[2:]):  # b waited for a of its seed and started from it
        tuned = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        assert Path(tuned["model"]) == Path(runs2[seed]["run_dir"]) / "pretrained"
        assert log.index(f"] a seed {seed}: done in") < log.index(f"] b seed {seed}: training")
    assert "up to 2 at once with 1 thread(s) each" in log and "ETA" in log
    assert "test" in (Path(runs2[0]["run_dir"]) / "study.log").read_text()  # the worker's training output
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_a_failing_worker_stops_the_study(tmp_path, cache, monkeypatch):
    import multiprocessing

    from vmamba.study import StudyRunError

    monkeypatch.setenv("VMAMBA_CACHE", str(cache))
    plan = _tiny_plan(("flops",), backend="torch")
    good = plan.configs["a"]
    plan.configs = {"good": good, "bad": dict(good, model_args=dict(good["model_args"], scan_mode="sideways"))}
    with pytest.raises(StudyRunError, match=r"run 'bad' seed 0 failed: ConfigError: .*scan_mode.*study\.log"):
        run_study(plan, out=tmp_path / "report", runs=tmp_path / "runs", threads=1, jobs=2)
    assert not multiprocessing.active_children()  # the other worker was stopped too
    assert not (tmp_path / "report" / "report.md").exists()


class _TinyPeer:
    """A builder for a model vmamba's registry does not know (a stand-in for a timm peer)."""

    def __call__(self, num_classes=2, in_chans=1, drop_path_rate=0.0, width=4):
        import torch.nn as nn

        net = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(width, num_classes))
        net.num_classes, net.in_chans, net.config = num_classes, in_chans, dict(width=width)
        return net


@pytest.mark.slow
def test_study_trains_its_own_builders_outside_the_registry(tmp_path, cache, monkeypatch):
    import vmamba
    from vmamba.study import peers

    monkeypatch.setenv("VMAMBA_CACHE", str(cache))
    monkeypatch.setitem(peers.BUILDERS, "study_tiny", _TinyPeer())
    plan = _tiny_plan(("flops",))
    plan.configs = {"tiny": dict(model="study_tiny", model_args=dict(width=6))}
    plan.seeds = (0,)
    run_study(plan, out=tmp_path / "report", runs=tmp_path / "runs", threads=1)
    doc = json.loads((tmp_path / "report" / "results.json").read_text())
    assert doc["summary"]["tiny"]["top1"]["n"] == 1
    assert doc["summary"]["tiny"]["params"] == (9 * 6 + 6) + (6 * 2 + 2)  # the builder's network, width 6
    assert "study_tiny" not in vmamba.list_models()


def test_cli_study_arguments(capsys):
    from vmamba.cli import main

    with pytest.raises(SystemExit) as e:
        main(["study", "scna"])
    assert e.value.code == 2 and "invalid choice: 'scna'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["study", "scan", "--source", "fashion-mnist", "--budget", "micro"])
    assert e.value.code == 2 and "--source applies to the transfer plan only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["study", "scan", "--jobs", "-1"])
    assert e.value.code == 2 and "argument --jobs: -1 is not allowed; expected an integer >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["study", "scan", "--preload", "no-such-file.py"])
    assert e.value.code == 2 and "--preload no-such-file.py: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_peers_are_built_at_the_same_flops(timm_module):
    import torch

    from vmamba.analysis.erf import erf_map
    from vmamba.study.peers import BUILDERS, FLOP_TOLERANCE, PEERS, model_flops

    plan = make_plan("peers", "quick")
    goal = model_flops(plan.configs["VMamba v2+z"]["model"], plan.configs["VMamba v2+z"]["model_args"], 32, 1)
    for name in PEERS:
        cfg = plan.configs[name]
        assert abs(model_flops(cfg["model"], cfg["model_args"], 32, 1) / goal - 1) <= FLOP_TOLERANCE
        net = BUILDERS[cfg["model"]](**cfg["model_args"], num_classes=2, in_chans=1).eval()
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 2)
        assert net(torch.randn(1, 1, 64, 64)).shape == (1, 2)  # other sizes too (resolution plan)
        assert net.forward_features(torch.randn(1, 1, 32, 32)).dim() == 4
        assert erf_map(net, [torch.randn(1, 64, 64)]).shape == (64, 64)


def test_importing_the_study_leaves_the_model_registry_alone():
    """The peers have their own builders; vmamba.list_models() is the zoo with or without vmamba.study."""
    import subprocess

    code = ("import vmamba; before = vmamba.list_models(); "
            "import vmamba.study, vmamba.study.peers, vmamba.study.runner, vmamba.cli.study; "
            "after = vmamba.list_models(); assert after == before, set(after) ^ set(before); "
            "assert not vmamba.list_models('study_*'); print(len(after))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert int(out) > 0
