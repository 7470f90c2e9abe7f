"""The analyses: bench (throughput/scaling), effective receptive field; their outputs."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import vmamba
from vmamba.analysis import BenchRow, erf_map, erf_summary, fit_exponents, mass_outside, run_benchmarks
from vmamba.analysis.bench import write_results
from vmamba.analysis.erf import load_images, plot_erfs
from vmamba.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(model, pixels_side, seconds, batch=1):
    return BenchRow(model, "infer", batch, pixels_side, pixels_side, seconds, seconds, seconds,
                    batch / seconds, None, "cpu")


def test_fit_exponents_recovers_linear_and_quadratic_costs():
    rows = [_row("linear", s, 1e-6 * s * s) for s in (64, 128, 256)]
    rows += [_row("quadratic", s, 1e-9 * (s * s) ** 2) for s in (64, 128, 256)]
    fits = fit_exponents(rows)
    assert math.isclose(fits[("linear", "infer", 1)], 1.0, abs_tol=1e-9)
    assert math.isclose(fits[("quadratic", "infer", 1)], 2.0, abs_tol=1e-9)


def test_bench_runs_and_writes_outputs(tmp_path):
    rows = run_benchmarks(["vmamba_tiny_s1l8"], sizes=[32, 48], batches=[1], modes=["infer", "train"],
                          warmup=0, reps=1, progress=False)
    assert len(rows) == 4 and not any(r.error for r in rows)
    assert all(r.img_per_s > 0 and r.p25_s <= r.median_s <= r.p75_s for r in rows)
    failed = run_benchmarks(["not_a_model_anywhere"], sizes=[32], warmup=0, reps=1, progress=False)
    assert failed[0].error
    paths = write_results(rows + failed, tmp_path)
    assert paths["csv"].read_text().startswith("model,mode,batch")
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 5 and "vmamba_tiny_s1l8/infer/b1" in data["exponents"]
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)


def test_bench_cli(tmp_path, capsys):
    assert main(["bench", "--models", "vanilla_vmamba_tiny", "--sizes", "32", "--reps", "1", "--warmup", "0",
                 "--out", str(tmp_path)]) == 0
    assert "vanilla_vmamba_tiny" in capsys.readouterr().out
    assert (tmp_path / "bench.csv").is_file()


class SmallCNN(nn.Module):
    """Two 3x3 convolutions: a theoretical receptive field of 5x5 pixels."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def test_vmamba_sees_beyond_a_small_cnns_receptive_field():
    torch.manual_seed(0)
    images = load_images(None, size=48, count=2)
    cnn = erf_map(SmallCNN(), images)
    assert mass_outside(cnn, radius=2) == 0.0  # exactly nothing beyond 5x5 around the centre
    model = vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16)
    erf = erf_map(model, images)
    assert erf.shape == (48, 48)
    # The centre of the last (stride-32) stage covers at most the 32x32 block around it through
    # convolutions; the scans carry gradient everywhere.
    assert mass_outside(erf, radius=2) > 0.5
    summary = erf_summary(erf)
    assert 0 < summary["area_ratio_50"] <= summary["area_ratio_99"] <= 1


def test_erf_cli_and_png(tmp_path, capsys):
    assert main(["erf", "vanilla_vmamba_tiny", "--size", "32", "--count", "1", "--peers",
                 "--out", str(tmp_path)]) == 0
    assert "vanilla_vmamba_tiny (init)" in capsys.readouterr().out
    assert (tmp_path / "erf.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((tmp_path / "erf.json").read_text())
    assert "mass_outside_central_half" in summary["models"]["vanilla_vmamba_tiny (init)"]
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "erf.png").ndim == 3


def test_erf_from_a_saved_checkpoint(tmp_path, capsys):
    model = vmamba.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=16, in_chans=1, num_classes=10)
    path = vmamba.save_weights(model, tmp_path / "small.safetensors")
    assert main(["erf", "vmamba_tiny_s1l8", "--checkpoint", str(path), "--size", "32", "--count", "1",
                 "--peers", "--out", str(tmp_path)]) == 0
    assert "vmamba_tiny_s1l8 (trained)" in capsys.readouterr().out


def test_erf_errors(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        erf_map(SmallCNN(), [])
    with pytest.raises(SystemExit):
        main(["erf", "vmamba_tiny_s1l8", "--images", "/nonexistent/folder"])
    pytest.importorskip("matplotlib")
    png = plot_erfs({"a": erf_map(SmallCNN(), load_images(None, 32, 1))}, tmp_path / "e.png")
    assert png == tmp_path / "e.png" and png.read_bytes().startswith(PNG_MAGIC)


def test_resolution_scaling_of_a_trained_model(tmp_path, capsys, make_image_folder):
    from vmamba.train import make_config, train

    data = make_image_folder(tmp_path / "imgs")
    train(make_config("default", data=str(data), out=str(tmp_path / "run"), epochs=1, img_size=16, in_chans=3,
                      batch_size=4, lr=1e-3, lr_base_batch=4, warmup_epochs=0.5, drop_path=0.0, progress=False,
                      workers=0, model_args=dict(dims=8, depths=[1, 1], d_state=4)))
    checkpoint = tmp_path / "run" / "best.pt"
    assert main(["scaling", str(checkpoint), "--data", str(data), "--sizes", "16", "24", "32",
                 "--out", str(tmp_path / "scaling")]) == 0
    out = capsys.readouterr().out
    assert "top-1 %" in out
    result = json.loads((tmp_path / "scaling" / "scaling.json").read_text())
    sizes = [r["size"] for r in result["rows"]]
    assert sizes == [16, 24, 32]
    assert result["rows"][0]["top1"] > 50  # the training size: the two tints are learnt
    assert all((r["top1"] * 16 / 100).is_integer() for r in result["rows"])  # whole images of 16
    gflops = [r["gflops"] for r in result["rows"]]
    assert gflops[0] < gflops[1] < gflops[2]
    assert (tmp_path / "scaling" / "scaling.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(SystemExit):
        main(["scaling", str(tmp_path / "missing.pt")])
