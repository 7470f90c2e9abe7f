"""Hostile inputs: every bad flag value is a usage error (exit 2, flag + value + what is allowed,
no traceback, nothing written), runs never collide in one output folder, write failures name the
file, resume refuses what it cannot continue, and the final accuracy is measured honestly."""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from vmamba.cli import main  # noqa: E402
from vmamba.train import engine, make_config, train  # noqa: E402
from vmamba.train.config import ConfigError  # noqa: E402

TINY = dict(img_size=16, in_chans=3, batch_size=4, model_args=dict(dims=8, depths=[1, 1], d_state=4),
            drop_path=0.0, progress=False, workers=0, lr=1e-3, lr_base_batch=4, warmup_epochs=0.5)
TINY_FLAGS = ["--img-size", "16", "--in-chans", "3", "--batch-size", "4", "--model-args",
              '{"dims": 8, "depths": [1, 1], "d_state": 4}', "--drop-path", "0", "--no-progress",
              "--lr-base-batch", "4", "--workers", "0"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without CUDA")


def image_folder(root: Path, splits=("train", "val"), per_class: int = 6) -> Path:
    """Small tinted images of two classes in root/<split>/<class>/."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 100, (20, 20, 3), dtype=np.uint8)
                img[..., c] += 120
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
    """A finished one-epoch run: (its --out, train()'s result)."""
    out = tmp_path_factory.mktemp("run")
    return out, train(make_config("default", data=str(folder), out=str(out), epochs=1, **TINY))


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    return err


# --- every value checked before any work --------------------------------------------------

@pytest.mark.parametrize("flags, expected", [
    (["--betas", "0.9"], "argument --betas: expected 2 arguments"),
    (["--betas", "0.9", "1.5"], "--betas 0.9 1.5: not allowed; expected two numbers in [0, 1)"),
    (["--interpolation", "cubicle"], "--interpolation 'cubicle': not allowed; expected one of bicubic"),
    (["--crop-pct", "0"], "--crop-pct 0.0: not allowed; expected a number in (0, 1]"),
    (["--lr-base-batch", "0"], "--lr-base-batch 0: not allowed; expected an integer >= 1"),
    (["--lr", "-1e-3"], "--lr -0.001: not allowed; expected a number > 0"),
    (["--lr", "nan"], "--lr nan: not allowed; expected a number > 0"),
    (["--drop-path", "2"], "--drop-path 2.0: not allowed; expected a number in [0, 1)"),
    pytest.param(["--device", "cuda"], "--device 'cuda': not allowed; expected a device this machine has",
                 marks=NO_CUDA),
    (["--device", "tpu9"], "--device 'tpu9': not allowed"),
    (["--img-size", "0"], "--img-size 0: not allowed; expected an integer >= 1"),
    (["--model", "resnet50"], "--model 'resnet50': not allowed; expected one of vanilla_vmamba_base"),
    (["--model-args", '{"foo": 1}'], "['foo'] are not"),
    (["--model-args", '{"num_classes": 5}'], "set by the data"),
    (["--weight-decay", "-0.05"], "--weight-decay -0.05: not allowed; expected a number >= 0"),
    (["--label-smoothing", "2"], "--label-smoothing 2.0: not allowed; expected a number in [0, 1)"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1.0: not allowed; expected a number >= 0"),
    (["--hflip", "5"], "--hflip 5.0: not allowed; expected a probability in [0, 1]"),
    (["--clip-grad", "-1"], "--clip-grad -1.0: not allowed; expected a number >= 0"),
    (["--scale", "1.0", "0.5"], "--scale 1 0.5: not allowed; expected two numbers lo hi with 0 < lo <= hi <= 1"),
    (["--threads", "-2"], "--threads -2: not allowed; expected an integer >= 0"),
    (["--max-steps-per-epoch", "-1"], "--max-steps-per-epoch -1: not allowed; expected an integer >= 0"),
    (["--epochs", "0"], "--epochs 0: not allowed; expected an integer >= 1"),
    (["--batch-size", "0"], "--batch-size 0: not allowed; expected an integer >= 1"),
    (["--val-fraction", "1"], "--val-fraction 1.0: not allowed; expected a number in (0, 1)"),
    (["--mean", "0.5", "0.5"], "expected 1 value(s) each (--in-chans 1), or one for all channels"),
    (["--std", "0"], "--std 0: not allowed; expected values > 0"),
    (["--amp", "sometimes"], "--amp 'sometimes': not allowed; expected auto, on or off"),
    (["--randaugment", "rand-m9-mstd0.5-inc1"], "inc1 (timm's increasing-severity op variants) is not available"),
    (["--randaugment", "rand-m9-foo3"], "unknown part 'foo3'"),
    (["--data", "/does/not/exist"], "--data '/does/not/exist': not a folder and not the built-in dataset"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
])
def test_bad_train_flags_are_usage_errors_before_any_work(flags, expected, tmp_path, capsys):
    out = tmp_path / "out"
    err = usage_error(["train", "--out", str(out), *flags], capsys)
    assert expected in err
    assert not out.exists()  # nothing written, nothing loaded


@pytest.mark.parametrize("text, expected", [
    ("lr = -1\n", "--lr -1.0: not allowed; expected a number > 0"),
    ('epochs = "many"\n', "--epochs 'many': not allowed; expected an integer"),
    ("betas = [0.9]\n", "--betas 0.9: not allowed; expected two numbers"),
    ("lr = [\n", "not valid TOML"),
])
def test_bad_config_file_values_name_the_flag(text, expected, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(text)
    assert expected in usage_error(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")],
                                   capsys)


def test_model_arg_values_are_refused_before_the_data_loads(tmp_path, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data loaded before the model was checked")

    monkeypatch.setattr(engine, "make_loaders", no_data)
    with pytest.raises(ConfigError, match=r'--model vmamba_tiny_s1l8 --model-args \{"dims": 0, "depths": \[1, 1\]\}: '):
        train(make_config("default", data="fashion-mnist-subset", out=str(tmp_path / "o"),
                          **dict(TINY, model_args=dict(dims=0, depths=[1, 1]))))


@pytest.mark.parametrize("argv, expected", [
    (["predict", "m.safetensors", "a.png", "--img-size", "0"], "argument --img-size: 0 is not allowed; expected an integer >= 1"),
    (["predict", "m.safetensors", "a.png", "--topk", "0"], "argument --topk: 0 is not allowed"),
    (["eval", "m.safetensors", "--img-size", "0"], "argument --img-size: 0 is not allowed; expected an integer >= 1"),
    (["eval", "m.safetensors", "--crop-pct", "0"], "argument --crop-pct: 0 is not allowed; expected a number > 0 and <= 1"),
    (["eval", "m.safetensors", "--batch-size", "-1"], "argument --batch-size: -1 is not allowed"),
    (["eval", "m.safetensors", "--split", "holdout"], "argument --split: invalid choice: 'holdout'"),
    pytest.param(["eval", "m.safetensors", "--device", "cuda"], "argument --device: 'cuda': not allowed", marks=NO_CUDA),
    (["erf", "vmamba_tiny_s1l8", "--size", "100000"], "--size 100000: an ERF at 100000x100000 over 8 image(s) needs about"),
    (["erf", "vmamba_tiny_s1l8", "--size", "16"], "argument --size: 16 is not allowed; expected an integer >= 32"),
    (["erf", "vmamba_tiny_s1l8", "--count", "0"], "argument --count: 0 is not allowed"),
    (["export", "vmamba_tiny_s1l8", "--opset", "5", "-o", "m.onnx"], "argument --opset: 5 is not allowed; expected an integer >= 18"),
    (["export", "vmamba_tiny_s1l8", "--opset", "99", "-o", "m.onnx"], "--opset 99: not allowed; this torch.onnx writes opsets 18 to"),
    (["export", "vmamba_tiny_s1l8", "--size", "0", "224", "-o", "m.onnx"], "argument --size: 0 is not allowed"),
    (["export", "vmamba_tiny_s1l8", "--tolerance", "-1", "-o", "m.onnx"], "argument --tolerance: -1 is not allowed"),
])
def test_bad_flags_of_other_commands_are_usage_errors(argv, expected, capsys):
    assert expected in usage_error(argv, capsys)


# --- unwritable outputs are found before the work -------------------------------------------

def _unwritable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path that cannot be written and the words the error must contain."""
    if kind == "file in the way":
        (tmp_path / "blocker").write_text("x")
        return tmp_path / "blocker" / "sub", "blocker"
    if kind == "sysfs":
        return Path("/sys/vmamba-probe"), "/sys/vmamba-probe"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "sub", "ro"


UNWRITABLE = ["file in the way",
              pytest.param("sysfs", marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs")),
              pytest.param("read-only", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere"))]


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_export_to_an_unwritable_path_fails_before_exporting(kind, tmp_path, capsys, monkeypatch):
    import vmamba.deploy

    monkeypatch.setattr(vmamba.deploy, "export_onnx", lambda *a, **k: pytest.fail("exported first"))
    path, words = _unwritable(tmp_path, kind)
    err = usage_error(["export", "vmamba_tiny_s1l8", "-o", str(path) + ".onnx"], capsys)
    assert "-o/--output" in err and words in err


def test_export_onto_a_folder_is_refused(tmp_path, capsys):
    (tmp_path / "m.onnx").mkdir()
    assert "a folder is in the way" in usage_error(["export", "vmamba_tiny_s1l8", "-o", str(tmp_path / "m.onnx")],
                                                   capsys)


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_train_into_an_unwritable_out_fails_before_loading_data(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "make_loaders", lambda *a, **k: pytest.fail("data loaded first"))
    path, words = _unwritable(tmp_path, kind)
    err = usage_error(["train", "--out", str(path), *TINY_FLAGS], capsys)
    assert "--out" in err and words in err


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_erf_into_an_unwritable_out_fails_before_computing(kind, tmp_path, capsys):
    path, words = _unwritable(tmp_path, kind)
    err = usage_error(["erf", "vmamba_tiny_s1l8", "--size", "32", "--count", "1", "--peers", "--out", str(path)],
                      capsys)
    assert "--out" in err and words in err


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from vmamba.train.checkpointing import load_training_checkpoint, save_training_checkpoint
    from vmamba.train.outdir import WriteError

    path = tmp_path / "last.pt"
    save_training_checkpoint({"epoch": 1}, path)

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=f"no space left on device writing {path}"):
        save_training_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_training_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_full_disk_mid_run_exits_1_with_the_path(folder, tmp_path, capsys, monkeypatch):
    from vmamba.train import checkpointing

    real_save = torch.save

    def full_on_second_epoch(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpointing.torch, "save", full_on_second_epoch)
    out = tmp_path / "out"
    code = main(["train", "--data", str(folder), "--out", str(out), "--epochs", "2", "--max-steps-per-epoch", "1",
                 *TINY_FLAGS])
    assert code == 1
    assert f"no space left on device writing {out / 'last.pt'}" in capsys.readouterr().err
    monkeypatch.undo()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0


# --- one run per output folder --------------------------------------------------------------

def test_a_second_run_into_a_locked_out_is_refused(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "make_loaders", lambda *a, **k: pytest.fail("data loaded while locked"))
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # a live run holds the lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps(dict(pid=12345, host="elsewhere", started="2026-01-01 00:00:00")))
        held.flush()
        for extra in ([], ["--resume", "auto"]):
            err = usage_error(["train", "--data", str(folder), "--out", str(out), *TINY_FLAGS, *extra], capsys)
            assert f"--out {out} is in use by another vmamba train (pid 12345 on elsewhere" in err


def test_a_stale_lock_of_a_dead_run_is_taken_over_with_a_message(tmp_path):
    from vmamba.train.outdir import RunLock

    (tmp_path / ".lock").write_text(json.dumps(dict(pid=999999, host="h", started="then")) + "\n")
    lock = RunLock(tmp_path)
    message = lock.acquire()
    assert "taking over the lock" in message and "pid 999999" in message
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: the next run says nothing
    assert RunLock(tmp_path).acquire() is None


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(finished, capsys, monkeypatch):
    out, _ = finished
    before = (out / "last.pt").read_bytes()
    monkeypatch.setattr(engine, "make_loaders", lambda *a, **k: pytest.fail("data loaded"))
    err = usage_error(["train", "--out", str(out), "--resume", "", *TINY_FLAGS], capsys)
    assert f"--out {out} already holds a run" in err and "--resume auto" in err
    assert (out / "last.pt").read_bytes() == before


def test_resuming_a_finished_run_reports_it_again(finished, folder):
    out, first = finished
    rows = (out / "metrics.jsonl").read_text()
    again = train(make_config("default", data=str(folder), out=str(out), epochs=1, resume="auto", **TINY))
    assert (again["acc1"], again["best_epoch"], again["weights"]) == (first["acc1"], first["best_epoch"], first["weights"])
    assert (out / "metrics.jsonl").read_text() == rows  # no epoch trained


@pytest.mark.parametrize("change, expected", [
    (dict(model_args=dict(dims=16, depths=[1, 1], d_state=4)), '--model-args was {"dims": 8'),
    (dict(lr=5e-3), "--lr was 0.001, now 0.005"),
])
def test_resume_with_other_options_is_refused(finished, folder, change, expected):
    out, _ = finished
    with pytest.raises(ConfigError, match="cannot resume") as e:
        train(make_config("default", data=str(folder), out=str(out), epochs=1, resume="auto", **dict(TINY, **change)))
    assert expected in str(e.value)


@pytest.mark.parametrize("weights, expected", [
    ("safetensors", "holds weights only"),
    ("bare state dict", "holds weights only, not a training state (missing args, epoch, optimizer"),
    ("missing", "no such file"),
    ("folder", "a folder"),
])
def test_resume_of_a_weights_only_file_is_a_clear_error(finished, folder, tmp_path, weights, expected, capsys):
    out, _ = finished
    path = {"safetensors": out / "model.safetensors", "bare state dict": tmp_path / "weights.pth",
            "missing": tmp_path / "nothing.pt", "folder": out}[weights]
    if weights == "bare state dict":
        torch.save({"model": torch.load(out / "last.pt", weights_only=True)["model"]}, path)
    err = usage_error(["train", "--data", str(folder), "--out", str(tmp_path / "new"), "--resume", str(path),
                       *TINY_FLAGS], capsys)
    assert f"--resume {path}: {expected}" in err
    assert "expected last.pt or best.pt of a vmamba train run" in err


# --- predict over many files ----------------------------------------------------------------

def test_predict_skips_an_unreadable_file_with_a_message(finished, folder, tmp_path, capsys):
    out, _ = finished
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    good = [str(folder / "val/cat/0.png"), str(folder / "val/dog/1.png")]
    code = main(["predict", str(out / "model.safetensors"), good[0], str(broken), good[1], "--topk", "1"])
    captured = capsys.readouterr()
    assert code == 1  # some input was skipped
    printed = [line for line in captured.out.splitlines() if not line.startswith(" ")]
    assert printed == good
    assert f"skipping {broken}: cannot read it as an image" in captured.err
    assert "skipped 1 unreadable image file(s) of 3" in captured.err
    assert "none of the 1 image file(s) could be read" in usage_error(
        ["predict", str(out / "model.safetensors"), str(broken)], capsys)


# --- honest numbers: validation held out, test measured once --------------------------------

def test_holdout_is_stratified_disjoint_and_fixed():
    from vmamba.train.datasets import holdout_indices

    targets = [i % 3 for i in range(300)]
    train_idx, val_idx = holdout_indices(targets, 0.1)
    assert not set(train_idx) & set(val_idx) and sorted(train_idx + val_idx) == list(range(300))
    assert np.bincount([targets[i] for i in val_idx]).tolist() == [10, 10, 10]
    assert holdout_indices(targets, 0.1) == (train_idx, val_idx)  # the same split every run


def test_builtin_validation_is_held_out_of_the_training_images():
    from vmamba.train.datasets import build_dataset

    tr, val, test = (build_dataset("fashion-mnist-subset", s) for s in ("train", "val", "test"))
    assert (len(tr), len(val), len(test)) == (9000, 1000, 2000)
    assert not set(tr.indices) & set(val.indices) and np.array_equal(tr.base.images, val.base.images)
    assert np.bincount(val.targets).tolist() == [100] * 10


def test_test_split_is_measured_once_with_the_selected_weights(tmp_path, monkeypatch):
    from vmamba.train import evaluate_checkpoint

    data = image_folder(tmp_path / "d", splits=("train", "val", "test"))
    seen = []
    real = engine.evaluate

    def counting(model, loader, *a, **k):
        seen.append(loader)
        return real(model, loader, *a, **k)

    monkeypatch.setattr(engine, "evaluate", counting)
    result = train(make_config("default", data=str(data), out=str(tmp_path / "o"), epochs=2, **TINY))
    test_loaders = [ld for ld in seen if ld.dataset.description.endswith("/test")]
    assert len(seen) == 3 and len(test_loaders) == 1  # val after each epoch, test once at the end
    assert result["split"] == "test" and result["acc1"] == result["test_acc1"]
    monkeypatch.undo()
    again = evaluate_checkpoint(tmp_path / "o/model.safetensors", data=str(data), split="test")
    assert again["acc1"] == pytest.approx(result["test_acc1"])
    saved = json.loads((tmp_path / "o/result.json").read_text())
    assert saved["split"] == "test" and saved["acc1"] == result["acc1"]


# --- flag types and RandAugment --------------------------------------------------------------

def test_flag_types_come_from_real_type_hints():
    import argparse

    from vmamba.cli.train import flag_options

    assert flag_options(tuple[float, float])["nargs"] == 2
    assert flag_options(tuple[float, ...])["nargs"] == "+"
    assert flag_options(tuple[int, int, int]) == dict(type=int, nargs=3, metavar=("X", "X", "X"))
    assert flag_options(bool)["action"] is argparse.BooleanOptionalAction
    assert flag_options(int) == {"type": int}
    with pytest.raises(TypeError, match="no command-line form"):
        flag_options(list[str])
    args = __import__("vmamba.cli", fromlist=["build_parser"]).build_parser().parse_args(
        ["train", "--betas", "0.8", "0.9", "--mean", "0.5", "--ema"])
    assert (args.betas, args.mean, args.ema) == ([0.8, 0.9], [0.5], True)


def test_randaugment_honours_mstd():
    pytest.importorskip("kornia")
    from vmamba.train.transforms import BatchAugment, parse_randaugment

    assert parse_randaugment("rand-m9-n3-mstd0.5-inc0") == (3, 9.0, 0.5)
    torch.manual_seed(0)
    noisy, fixed = BatchAugment((0.5,), (0.5,), "rand-m9-mstd0.5"), BatchAugment((0.5,), (0.5,), "rand-m9")
    magnitudes = {"noisy": [], "fixed": []}
    for _ in range(8):
        for name, aug in (("noisy", noisy), ("fixed", fixed)):
            aug(torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8))
            magnitudes[name].append(aug.photometric.m)
    assert set(magnitudes["fixed"]) == {27.0}
    assert len(set(magnitudes["noisy"])) == 8 and all(0 < m < 30 for m in magnitudes["noisy"])
    assert abs(np.mean(magnitudes["noisy"]) - 27) < 3 * 1.5  # N(9, 0.5) on timm's scale, x3 on kornia's
