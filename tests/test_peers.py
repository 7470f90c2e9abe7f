"""`vmamba peers`: ratios, the timm-unavailable path, argument checks, JSON/CSV output, memory probe.

Tiny stand-in models keep these fast; the real models run only in the one slow memory test.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import sys
import types

import pytest
import torch.nn as nn

from vmamba.analysis import peers
from vmamba.cli import main


def tiny_model(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 1000))


@pytest.fixture
def fake_models(monkeypatch):
    """Every model name builds a tiny CNN; timm 'imports' as a stand-in; no kernel build."""
    built = []

    def build(name, size, timm=None, peer_linear="timm"):
        if name == "fixed_size" and size != 32:
            raise ValueError("img_size must be 32")
        built.append((name, size))
        return tiny_model(8 if name.startswith("vmamba") else 4)

    monkeypatch.setattr(peers, "build_model", build)
    monkeypatch.setattr(peers, "import_timm", lambda preload=None: (types.SimpleNamespace(__version__="0.test"), None))
    monkeypatch.setattr(peers, "_kernel_build", lambda: {"lanes": 8, "flags": "-O3"})
    return built


def result(model, kind, img_per_s, peak_mb=None, size=224, batch=1, threads=1, mode="infer"):
    r = peers.PeerResult(model, kind, size, batch, threads, mode)
    r.img_per_s, r.median_s, r.p25_s, r.p75_s, r.rounds = img_per_s, batch / img_per_s, 0.0, 0.0, 1
    r.peak_mb = peak_mb
    return r


def test_ratios_divide_by_each_peer_of_the_same_configuration():
    rows = [
        result("vmamba_tiny_s1l8", "zoo", 12.0, 300.0),
        result("swin_tiny", "peer", 10.0, 200.0),
        result("convnext_tiny", "peer", 15.0, None),
        result("vmamba_tiny_s1l8", "zoo", 4.0, size=512),   # no peer at 512: no ratio
        result("swin_tiny", "peer", 8.0, threads=2),        # another configuration
    ]
    got = {(d["model"], d["peer"], d["threads"]): d for d in peers.ratios(rows)}
    assert got[("vmamba_tiny_s1l8", "swin_tiny", 1)]["speed_ratio"] == pytest.approx(1.2)
    assert got[("vmamba_tiny_s1l8", "swin_tiny", 1)]["memory_ratio"] == pytest.approx(1.5)
    assert got[("vmamba_tiny_s1l8", "convnext_tiny", 1)]["speed_ratio"] == pytest.approx(0.8)
    assert got[("vmamba_tiny_s1l8", "convnext_tiny", 1)]["memory_ratio"] is None
    assert got[("swin_tiny", "swin_tiny", 1)]["speed_ratio"] == 1.0
    assert not [d for d in got.values() if d["model"] == "vmamba_tiny_s1l8" and d["threads"] == 2]
    assert len([d for d in peers.ratios(rows) if d["size"] == 512]) == 0


def test_exponent_fit_recovers_linear_and_quadratic_cost():
    rows = []
    for size in (64, 128, 256):
        px = size * size
        rows.append(result("linear", "zoo", 1.0 / (px * 1e-6), size=size))
        rows.append(result("quadratic", "peer", 1.0 / (px * px * 1e-12), size=size))
    fits = peers.fit_exponents(rows)
    assert fits["linear/infer/b1/t1"] == pytest.approx(1.0)
    assert fits["quadratic/infer/b1/t1"] == pytest.approx(2.0)


def test_isa_names_and_plan():
    assert peers.isa_features({"avx2", "fma", "sse4_2"}) == ["AVX2", "FMA"]
    assert peers.isa_features({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}) == [
        "AVX2", "FMA", "AVX-512", "AVX-512 BF16", "AMX"]
    assert peers.isa_features({"fp", "asimd"}) == ["NEON"]
    run, skipped = peers.plan([224, 1024], [1, 8], [1], ["infer"], max_pixels=1024 * 1024)
    assert run == [(224, 1, 1, "infer"), (224, 8, 1, "infer"), (1024, 1, 1, "infer")]
    assert skipped == [(1024, 8, 1, "infer")]


def test_run_interleaves_models_and_reports_ratios(fake_models):
    saved = []
    run = peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=["swin_tiny", "fixed_size"], sizes=[32, 48],
                          batches=[1, 2], threads=[1], modes=["infer", "train"], rounds=2, warmup=0, memory=False,
                          on_progress=lambda partial: saved.append(len(partial.results)))
    assert len(run.results) == 3 * 2 * 2 * 2
    assert saved == [3, 6, 9, 12, 15, 18, 21, 24]  # called after every configuration
    ok = [r for r in run.results if r.ok]
    assert all(r.rounds == 2 and r.img_per_s > 0 and r.p25_s <= r.median_s <= r.p75_s for r in ok)
    failed = [r for r in run.results if not r.ok]
    assert {(r.model, r.size) for r in failed} == {("fixed_size", 48)}
    assert "cannot build for 48x48" in failed[0].error and "img_size must be 32" in failed[0].error
    report = peers.format_report(run)
    assert "CPU: " in report and "ISA: " in report and "scan kernel build: lanes=8" in report
    assert "x swin_tiny" in report and "x fixed_size" in report
    assert "not measured: cannot build for 48x48" in report
    # Each model is built once per size, not once per configuration.
    assert sorted(fake_models) == sorted((m, s) for m in ("vmamba_tiny_s1l8", "swin_tiny", "fixed_size")
                                         for s in (32, 48) if (m, s) != ("fixed_size", 48))


def test_failing_step_is_reported_and_the_others_still_run():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("window size does not divide the map")

    x, labels = peers.make_batch(1, 32)
    steps = {"good": peers.Step(tiny_model(), x, labels, "infer"), "bad": peers.Step(Broken(), x, labels, "infer")}
    times, errors, _ = peers.time_interleaved(steps, rounds=3, warmup=1)
    assert len(times["good"]) == 3 and times["bad"] == []
    assert errors == {"bad": "RuntimeError: window size does not divide the map"}


def test_timm_that_fails_to_import_is_reported_and_zoo_models_still_run(tmp_path, monkeypatch):
    pkg = tmp_path / "timm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    timm, why = peers.import_timm()
    assert timm is None
    assert why == "timm is installed but does not import: RuntimeError: operator torchvision::nms does not exist"

    monkeypatch.setattr(peers, "build_model", lambda name, size, timm=None, peer_linear="timm": tiny_model())
    monkeypatch.setattr(peers, "_kernel_build", lambda: {"lanes": 8})
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    run = peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=["swin_tiny"], sizes=[32], batches=[1], threads=[1],
                          modes=["infer"], rounds=1, warmup=0, memory=False)
    assert [r.model for r in run.results] == ["vmamba_tiny_s1l8"] and run.results[0].ok
    assert run.settings["peers"] == [] and peers.ratios(run.results) == []
    report = peers.format_report(run)
    assert "peers skipped: timm is installed but does not import: RuntimeError" in report
    assert "--preload FILE" in report


def test_missing_timm_and_preload(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    timm, why = peers.import_timm()
    assert timm is None and why == "timm is not installed (pip install timm)"
    # --preload runs before the import; here it supplies a stand-in module.
    preload = tmp_path / "fix.py"
    preload.write_text("import sys, types\nsys.modules['timm'] = types.SimpleNamespace(__version__='fixed')\n")
    timm, why = peers.import_timm(preload)
    assert why is None and timm.__version__ == "fixed"


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "16"], "--sizes 16: sizes must be at least 32 pixels"),
    (["--batch", "0"], "--batch 0: batch sizes must be at least 1"),
    (["--threads", "0"], "--threads 0: thread counts must be at least 1"),
    (["--rounds", "0"], "--rounds 0: at least 1 round"),
    (["--memory-probes", "0"], "--memory-probes 0: at least 1 probe"),
    (["--warmup", "-1"], "--warmup -1: must be 0 or more"),
    (["--max-pixels", "-5"], "--max-pixels -5: must be 0 (no limit) or more"),
    (["--preload", "/nonexistent/fix.py"], "--preload /nonexistent/fix.py: no such file"),
    (["--models", "swin_tiny"], "--models swin_tiny: not zoo models"),
])
def test_bad_arguments_name_the_flag(argv, message, capsys, fake_models):
    with pytest.raises(SystemExit) as exc:
        main(["peers", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert fake_models == []  # nothing was built


def test_argparse_rejects_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["peers", "--modes", "eval"])
    assert exc.value.code == 2 and "invalid choice: 'eval'" in capsys.readouterr().err


def test_cli_writes_json_and_csv(tmp_path, capsys, fake_models):
    out_json, out_csv = tmp_path / "peers.json", tmp_path / "peers.csv"
    code = main(["peers", "--quick", "--sizes", "32", "--threads", "1", "--rounds", "1", "--warmup", "0",
                 "--models", "vmamba_tiny_s1l8", "--peers", "swin_tiny", "convnext_tiny", "--no-memory",
                 "--json", str(out_json), "--csv", str(out_csv)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "32x32, batch 1, 1 thread, inference" in printed and "32x32, batch 1, 1 thread, training step" in printed
    data = json.loads(out_json.read_text())
    assert set(data) == {"machine", "settings", "results", "ratios", "exponents", "notes"}
    assert {"cpu", "isa", "aten_capability", "torch", "scan_kernel"} <= set(data["machine"])
    assert data["machine"]["timm"] == "0.test"
    assert data["settings"]["sizes"] == [32] and data["settings"]["rounds"] == 1
    rows = {(r["model"], r["mode"]): r for r in data["results"]}
    assert len(rows) == 6
    zoo = rows[("vmamba_tiny_s1l8", "infer")]
    assert zoo["x_swin_tiny"] == pytest.approx(zoo["img_per_s"] / rows[("swin_tiny", "infer")]["img_per_s"])
    assert rows[("swin_tiny", "train")]["x_swin_tiny"] == 1.0
    assert zoo["peak_mb"] is None and zoo["mem_x_swin_tiny"] is None
    assert len(data["ratios"]) == 3 * 2 * 2
    with open(out_csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and table[0]["cpu"] == data["machine"]["cpu"]
    assert math.isclose(float(table[0]["img_per_s"]), data["results"][0]["img_per_s"])


def test_peer_linear_reaches_the_peers_and_the_report(monkeypatch, capsys, fake_models):
    calls = []
    build = peers.build_model
    monkeypatch.setattr(peers, "build_model",
                        lambda name, size, timm=None, peer_linear="timm": calls.append((name, peer_linear))
                        or build(name, size, timm))
    assert main(["peers", "--sizes", "32", "--threads", "1", "--rounds", "1", "--warmup", "0", "--modes", "infer",
                 "--batch", "1", "--models", "vmamba_tiny_s1l8", "--peers", "swin_tiny", "--no-memory",
                 "--peer-linear", "vmamba"]) == 0
    printed = capsys.readouterr().out
    assert "dense layers (CPU fp32): " in printed
    assert "peers' dense layers: vmamba's engine (--peer-linear vmamba)" in printed
    assert ("swin_tiny", "vmamba") in calls
    with pytest.raises(ValueError, match="peer_linear='mkl'"):
        peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=[], peer_linear="mkl")


def test_peer_linear_vmamba_converts_a_timm_models_linears(timm_module):
    from vmamba.ops import Linear

    stock = peers.build_model("deit_tiny_patch16_224", 32, timm_module)
    routed = peers.build_model("deit_tiny_patch16_224", 32, timm_module, peer_linear="vmamba")
    assert any(type(m) is nn.Linear for m in stock.modules())
    assert not any(type(m) is nn.Linear for m in routed.modules())
    assert sum(type(m) is Linear for m in routed.modules()) == sum(type(m) is nn.Linear for m in stock.modules())
    assert list(routed.state_dict()) == list(stock.state_dict())


def test_peak_memory_here_counts_the_step():
    got = peers.peak_memory_here(lambda: tiny_model(16), batch=2, size=64, mode="train")
    assert got["params_mb"] == pytest.approx(sum(p.numel() for p in tiny_model(16).parameters()) * 4 / 2 ** 20)
    assert got["peak_mb"] >= 0


@pytest.mark.slow
def test_peak_memory_probe_runs_a_zoo_model_in_a_fresh_process():
    got = peers.peak_memory("vmamba_tiny_s1l8", size=64, batch=1, mode="infer")
    assert "error" not in got, got
    assert got["params_mb"] == pytest.approx(30_249_064 * 4 / 2 ** 20, rel=0.01)
    assert got["peak_mb"] > got["params_mb"]  # the model itself is built inside the measured span
    bad = peers.peak_memory("no_such_model", size=64, batch=1, mode="infer", preload=None)
    assert "error" in bad


def test_machine_block_names_the_allocator_settings(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    for key in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    info = peers.machine_info(kernel=False)
    assert info["allocator"] == {}
    assert "memory allocator: the C library's defaults" in peers.format_machine(info)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "17179869184")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libfoo.so:/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    info = peers.machine_info(kernel=False)
    assert info["allocator"] == {"MALLOC_TRIM_THRESHOLD_": "17179869184",
                                 "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}
    assert "MALLOC_TRIM_THRESHOLD_=17179869184" in peers.format_machine(info)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's malloc")
def test_keep_memory_is_applied_and_reported():
    # in a child process: the mallopt settings last for the life of the process
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "vmamba", "peers", "--models", "vmamba_tiny_s1l8", "--peers",
                           "--sizes", "32", "--batch", "1", "--threads", "1", "--modes", "train", "--rounds", "1",
                           "--no-memory", "--keep-memory"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "memory allocator: mallopt=glibc" in proc.stdout and "M_MMAP_MAX=0" in proc.stdout


def test_memory_cells_are_the_median_of_probes_taken_in_turns(monkeypatch, capsys, fake_models):
    # one process's peak varies by tens of MB; each cell is the median of its probes, and the
    # models of a configuration are probed in turns (a drift of the machine hits them alike)
    calls, peaks = [], {"vmamba_tiny_s1l8": [300.0, 240.0, 250.0], "swin_tiny": [200.0, 260.0, 250.0]}

    def probe(model, size, batch, mode, preload=None, peer_linear="timm"):
        calls.append(model)
        return {"peak_mb": peaks[model][sum(c == model for c in calls) - 1], "params_mb": 1.0}

    monkeypatch.setattr(peers, "peak_memory", probe)
    run = peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=["swin_tiny"], sizes=[32], modes=["infer"], rounds=1,
                          warmup=0, memory_probes=3)
    assert calls == ["vmamba_tiny_s1l8", "swin_tiny"] * 3
    mem = {r.model: r.peak_mb for r in run.results}
    assert mem == {"vmamba_tiny_s1l8": 250.0, "swin_tiny": 250.0}
    assert run.settings["memory_probes"] == 3
    assert "median of 3 such processes" in peers.format_report(run)
    with pytest.raises(ValueError, match="memory_probes must be at least 1"):
        peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=[], memory_probes=0)


def test_a_failing_memory_probe_is_reported_once_and_not_retried(monkeypatch, fake_models):
    calls = []

    def probe(model, size, batch, mode, preload=None, peer_linear="timm"):
        calls.append(model)
        return {"error": "memory probe failed (exit 1): boom"} if model == "swin_tiny" else \
            {"peak_mb": 10.0, "params_mb": 1.0}

    monkeypatch.setattr(peers, "peak_memory", probe)
    run = peers.run_peers(zoo=["vmamba_tiny_s1l8"], peers=["swin_tiny"], sizes=[32], modes=["infer"], rounds=1,
                          warmup=0, memory_probes=3)
    assert calls.count("swin_tiny") == 1 and calls.count("vmamba_tiny_s1l8") == 3
    assert sum("boom" in n for n in run.notes) == 1
    assert {r.model: r.peak_mb for r in run.results} == {"vmamba_tiny_s1l8": 10.0, "swin_tiny": None}


def test_memory_probes_default_and_quick(fake_models):
    import argparse

    from vmamba.cli import peers as cli_peers

    parser = argparse.ArgumentParser()
    cli_peers.add_parser(parser.add_subparsers())
    assert cli_peers.resolve(parser.parse_args(["peers"]))["memory_probes"] == 3
    assert cli_peers.resolve(parser.parse_args(["peers", "--quick"]))["memory_probes"] == 1
    assert cli_peers.resolve(parser.parse_args(["peers", "--quick", "--memory-probes", "5"]))["memory_probes"] == 5
