"""Training stack: tiny runs on tiny images (a few steps each), resume, crash safety, bad data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from vmamba.train import DataError, NonFiniteLossError, PRESETS, evaluate_checkpoint, make_config, predict, train  # noqa: E402
from vmamba.train import engine  # noqa: E402
from vmamba.train.checkpointing import load_training_checkpoint, save_training_checkpoint  # noqa: E402
from vmamba.train.datasets import load_fashion_mnist  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = dict(img_size=16, in_chans=3, batch_size=4, model_args=dict(dims=8, depths=[1, 1], d_state=4),
            drop_path=0.0, progress=False, workers=0, lr=1e-3, lr_base_batch=4, warmup_epochs=0.5)


def tiny_config(data, out, **kw):
    return make_config("default", data=str(data), out=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_image_folder):
    return make_image_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_config(folder, out, epochs=2))
    return out, result


def test_train_writes_everything(trained):
    out, result = trained
    for name in ("last.pt", "best.pt", "model.safetensors", "metrics.jsonl", "metrics.csv", "config.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert 0 <= rows[-1]["data_wait_share"] <= 1 and rows[-1]["img_per_s"] > 0
    assert result["split"] == "val" and result["test_acc1"] is None  # train/ and val/ only: no test number
    assert result["acc1"] == rows[result["best_epoch"] - 1]["val_acc1"]
    assert result["acc1"] >= 75  # two tints, well above chance after two epochs
    ckpt = torch.load(out / "last.pt", weights_only=True)  # plain types only
    for key in ("model", "config", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "sampler",
                "args", "class_names"):
        assert key in ckpt, key
    assert ckpt["class_names"] == ["cat", "dog"] and ckpt["epoch"] == 1


def test_safetensors_export_rebuilds_the_model(trained):
    from vmamba import load_model

    out, _ = trained
    model = load_model(out / "model.safetensors")
    assert model.num_classes == 2
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 2)


def test_eval_and_predict(trained, folder):
    out, result = trained
    res = evaluate_checkpoint(out / "best.pt", data=str(folder))
    assert res["n"] == 16 and set(res["per_class"]) == {"cat", "dog"}
    assert res["acc1"] == pytest.approx(result["acc1"])
    assert res["acc5"] == 100.0  # two classes
    res32 = evaluate_checkpoint(out / "model.safetensors", data=str(folder), img_size=32)  # any resolution
    assert res32["img_size"] == 32
    top = predict(out / "model.safetensors", [folder / "val/cat/0.jpg"], topk=2)
    assert [name for name, _ in top[0]] in (["cat", "dog"], ["dog", "cat"])
    assert sum(p for _, p in top[0]) == pytest.approx(1.0, abs=1e-5)


def test_resume_equals_uninterrupted(folder, tmp_path, monkeypatch):
    full = tmp_path / "full"
    saved = []
    real_save = engine.save_training_checkpoint

    def save_and_keep(obj, path):  # keep a copy of the epoch-1 checkpoint, as a kill after it would
        real_save(obj, path)
        if Path(path).name == "last.pt" and obj["epoch"] == 0:
            saved.append(torch.load(path, weights_only=True))

    monkeypatch.setattr(engine, "save_training_checkpoint", save_and_keep)
    train(tiny_config(folder, full, epochs=3, max_steps_per_epoch=3))
    monkeypatch.undo()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    save_training_checkpoint(saved[0], resumed / "last.pt")
    rows_full = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    (resumed / "metrics.jsonl").write_text(json.dumps(rows_full[0]) + "\n")
    train(tiny_config(folder, resumed, epochs=3, max_steps_per_epoch=3, resume="auto"))
    rows_res = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc1", "lr")
    assert [[r[k] for k in keys] for r in rows_res] == [[r[k] for k in keys] for r in rows_full]
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


_WRITER = """
import sys, torch
sys.path.insert(0, {src!r})
from vmamba.train.checkpointing import save_training_checkpoint
big = {{"model": {{"w": torch.randn(6_000_000)}}, "epoch": 0}}
i = 0
while True:
    big["epoch"] = i
    save_training_checkpoint(big, {path!r})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_kill_9_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(src=SRC, path=str(path))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "0"  # one checkpoint is complete
        time.sleep(delay)  # then kill somewhere inside a later write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = load_training_checkpoint(path)
        assert ckpt["model"]["w"].numel() == 6_000_000 and ckpt["epoch"] >= 0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(folder, tmp_path, monkeypatch):
    real_build = engine.build_model
    calls = {"n": 0}

    def build_nan_after_one_epoch(cfg, num_classes):
        model = real_build(cfg, num_classes)
        forward = model.forward

        def poisoned(x):
            if model.training:
                calls["n"] += 1
            y = forward(x)
            return y * float("nan") if calls["n"] > 2 else y

        model.forward = poisoned
        return model

    monkeypatch.setattr(engine, "build_model", build_nan_after_one_epoch)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2"):
        train(tiny_config(folder, tmp_path, epochs=3, max_steps_per_epoch=2))
    assert load_training_checkpoint(tmp_path / "last.pt")["epoch"] == 0


def test_corrupt_images_are_skipped_and_counted_or_fail_when_strict(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "d", per_class=4)
    (root / "train/cat/broken.png").write_bytes(b"not an image")
    (root / "val/dog/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = train(tiny_config(root, tmp_path / "out", epochs=1))
    rows = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["skipped_images"] == 1
    assert result["split"] == "val" and result["acc1"] == rows[result["best_epoch"] - 1]["val_acc1"]
    assert result["acc1"] > 50  # trained on the readable images: above chance
    assert evaluate_checkpoint(tmp_path / "out/last.pt", data=str(root))["skipped"] == 1
    with pytest.raises(DataError, match="broken"):
        train(tiny_config(root, tmp_path / "strict", epochs=1, strict_data=True))


@pytest.mark.parametrize("layout, message", [
    ({"images/a/1.png"}, "no 'train' folder"),
    ({"train/1.png", "val/1.png"}, "no class sub-folders"),
    ({"train/a/notes.txt", "val/a/notes.txt"}, "no image files"),
])
def test_bad_layouts_give_clear_errors(tmp_path, layout, message):
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(DataError, match=message):
        train(tiny_config(tmp_path, tmp_path / "out", epochs=1))


def test_presets_config_file_and_overrides(tmp_path):
    imagenet = make_config("imagenet")
    assert (imagenet.lr, imagenet.lr_base_batch, imagenet.weight_decay, imagenet.ema_decay) == (1e-3, 1024, 0.05, 0.9999)
    assert (imagenet.mixup, imagenet.cutmix, imagenet.label_smoothing, imagenet.reprob) == (0.8, 1.0, 0.1, 0.25)
    (tmp_path / "c.toml").write_text('epochs = 7\nmodel_args = { dims = 16 }\n')
    cfg = make_config("default", str(tmp_path / "c.toml"), lr=0.5)
    assert (cfg.epochs, cfg.model_args, cfg.lr, cfg.img_size) == (7, {"dims": 16}, 0.5, PRESETS["default"]["img_size"])
    with pytest.raises(ValueError, match="unknown training option"):
        make_config("default", learning_rate=1)


def test_weight_decay_groups_skip_1d_params_and_ssm_params():
    from vmamba import create_model

    model = create_model("vmamba_tiny_s1l8", dims=8, depths=(1, 1), num_classes=3)
    decay, no_decay = engine.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert model.no_weight_decay() <= skipped and any(n.endswith(".bias") for n in skipped)
    assert no_decay["weight_decay"] == 0.0


def test_adamw_is_fused_where_the_parameters_allow_and_updates_as_the_default():
    from vmamba import create_model
    from vmamba.utils import adamw

    torch.manual_seed(0)
    model = create_model("vmamba_tiny_s1l8", dims=8, depths=(1, 1), num_classes=3, drop_path_rate=0.0)
    twin = create_model("vmamba_tiny_s1l8", dims=8, depths=(1, 1), num_classes=3, drop_path_rate=0.0)
    twin.load_state_dict(model.state_dict())
    opts = [adamw(engine.param_groups(m, 0.05), lr=1e-2, **kw) for m, kw in ((model, {}), (twin, {"fused": False}))]
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        for m, opt in zip((model, twin), opts):
            torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 2])).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))  # no fused kernel there: the default one
    assert not adamw([meta], lr=1e-3).defaults["fused"]
    cfg = make_config("default", model="vmamba_tiny_s1l8", model_args={"dims": 8, "depths": [1, 1]})
    run = engine.build_run(cfg, model, 3, torch.device("cpu"), steps=4)
    assert run.optimizer.defaults["fused"] is True  # what the trainer steps


def test_builtin_dataset_is_shipped_and_balanced():
    splits, desc = load_fashion_mnist(full=False)
    x, y = splits["train"]
    assert x.shape[1:] == (28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [len(y) // 10] * 10
    assert "subset" in desc


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_uninterrupted(folder, tmp_path):
    kw = dict(epochs=4, max_steps_per_epoch=3)
    train(tiny_config(folder, tmp_path / "ref", **kw))
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {SRC!r}); import torch; torch.set_num_threads({torch.get_num_threads()})\n"
            f"from vmamba.train import make_config, train\n"
            f"train(make_config('default', data={str(folder)!r}, out={str(out)!r}, **{{**{TINY!r}, **{kw!r}}}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(Path(__file__).parent)]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere in epoch 2 (or in the middle of a checkpoint write)
    proc.wait()
    assert load_training_checkpoint(out / "last.pt")["epoch"] <= 3
    train(tiny_config(folder, out, resume="auto", **kw))
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    keys = ("epoch", "step", "train_loss", "val_loss", "val_acc1")
    assert [[r[k] for k in keys] for r in rows(out)] == [[r[k] for k in keys] for r in rows(tmp_path / "ref")]


def test_resume_restores_the_log_row_of_an_epoch_killed_between_checkpoint_and_log(tmp_path):
    from vmamba.train.reporting import MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False)
    log.append(dict(epoch=1, val_acc1=50.0))
    log.append(dict(epoch=3, val_acc1=0.0))  # an epoch in flight at the kill, after a gap
    log.truncate(2, dict(epoch=2, val_acc1=60.0))  # checkpoint of epoch 2 exists, its row does not
    assert [r["epoch"] for r in log.read()] == [1, 2]
    assert log.read()[1]["val_acc1"] == 60.0
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == ["1,50.0", "2,60.0"]


def test_loader_workers_start_from_a_fork_server_where_main_is_not_rerun(monkeypatch, folder, tmp_path):
    """Workers are not forked from the (threaded) training process where the platform has a fork
    server and the main module is a package's __main__ or absent; a script keeps the default
    start method (a fork server would run it again in every worker)."""
    import multiprocessing
    import types
    from importlib.machinery import ModuleSpec

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")

    def main_module(spec_name=None, file=None):
        m = types.ModuleType("__main__")
        m.__spec__ = ModuleSpec(spec_name, None) if spec_name else None
        if file:
            m.__file__ = file
        return m

    for main, want in ((main_module("vmamba.__main__", "/x/vmamba/__main__.py"), "forkserver"),
                       (main_module("pytest.__main__", "/x/pytest/__main__.py"), "forkserver"),
                       (main_module(), "forkserver"),  # an interactive session or notebook
                       (main_module(None, "/home/me/train_script.py"), None),
                       (main_module("my_script", "/home/me/my_script.py"), None)):  # python -m my_script
        monkeypatch.setitem(sys.modules, "__main__", main)
        assert engine.worker_start_method() == want, main
    monkeypatch.setitem(sys.modules, "__main__", main_module("vmamba.__main__", "/x/vmamba/__main__.py"))
    cfg = tiny_config(folder, tmp_path / "run", epochs=1, max_steps_per_epoch=1)
    data = engine.make_loaders(tiny_config(folder, tmp_path / "run", workers=1), torch.device("cpu"))
    assert data.train_loader.multiprocessing_context.get_start_method() == "forkserver"
    assert engine.make_loaders(cfg, torch.device("cpu")).train_loader.multiprocessing_context is None  # workers=0
    x, y, skipped = next(iter(data.val_loader))  # a worker started by the server loads a batch
    assert x.shape[0] == y.shape[0] > 0 and skipped == 0
