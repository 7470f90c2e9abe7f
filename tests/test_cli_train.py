"""`vmamba train|eval|predict` on the command line, and DDP with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from vmamba.cli import main  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY_FLAGS = ["--img-size", "16", "--in-chans", "3", "--batch-size", "4", "--model-args",
              '{"dims": 8, "depths": [1, 1], "d_state": 4}', "--drop-path", "0", "--no-progress",
              "--lr-base-batch", "4"]


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: vmamba " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "many"], "invalid int value"),
    (["train", "--model-args", "{dims: 8"], "not valid JSON"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["train", "--preset", "nope"], "invalid choice"),
    (["train", "--data", "/does/not/exist"], "not a folder"),
    (["train", "--amp", "sometimes"], "--amp 'sometimes': not allowed; expected auto, on or off"),
    (["eval", "/does/not/exist.pt"], "/does/not/exist.pt: no such file or folder"),
    (["predict", "/does/not/exist.pt", "x.png"], "/does/not/exist.pt: no such file or folder"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_eval_predict_commands(tmp_path, capsys, make_image_folder):
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_FLAGS]) == 0
    assert "validation accuracy:" in capsys.readouterr().out  # no test/ folder: said plainly
    assert main(["eval", str(out / "best.pt"), "--data", str(data), "--per-class"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "cat" in text and "dog" in text
    assert main(["eval", str(out / "model.safetensors"), "--data", str(data), "--json", "--img-size", "24"]) == 0
    assert json.loads(capsys.readouterr().out)["img_size"] == 24
    assert main(["predict", str(out / "model.safetensors"), str(data / "val/dog/1.png"), "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("1.png") and lines[1].strip().split()[-1] in ("cat", "dog")


def test_python_dash_m_vmamba_train_help():
    r = subprocess.run([sys.executable, "-m", "vmamba", "train", "--help"], env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--preset" in r.stdout


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vmamba", "train", "--data", str(data), "--out", str(out), "--epochs", "2", "--device", "cpu",
           *TINY_FLAGS]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("validation accuracy:") == 1  # only rank 0 prints
    assert r.stdout.count("val top-1") == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["epoch_images"] == 8  # 12 images: 6 per rank, 1 step of 4 each, summed over ranks
    import torch

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["sampler"]["world_size"] == 2 and len(ckpt["rng"]) == 2


def test_eval_without_stored_config_asks_for_model(tmp_path, capsys):
    import torch

    from vmamba import create_model

    bare = tmp_path / "bare.pth"  # like the authors' checkpoints: weights only, no config
    torch.save({"model": create_model("vmamba_tiny_s1l8", dims=8, depths=[1, 1]).state_dict()}, bare)
    with pytest.raises(SystemExit) as e:
        main(["eval", str(bare)])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err
