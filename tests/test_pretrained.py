"""Published weights and the one loader: downloads from a server on 127.0.0.1 that serves files in
the authors' formats, the cache, every way a download fails, and every route to a model."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

import vmamba
from conftest import Reply
from vmamba.hub import DownloadError, weights_url
from vmamba.models import get_weights

TINY = dict(depths=(1, 1, 1, 1), dims=16)  # the published architectures, shrunk for speed
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

# The January-2024 names of the v0 release (this project's name -> theirs).
_JAN_2024 = [(r"^patch_embed\.0\.", "patch_embed.proj."), (r"^patch_embed\.2\.", "patch_embed.norm."),
             (r"^(layers\.\d+\.blocks\.\d+)\.norm\.", r"\1.ln_1."), (r"^(layers\.\d+\.blocks\.\d+)\.op\.", r"\1.self_attention."),
             (r"^classifier\.norm\.", "norm."), (r"^classifier\.head\.", "head.")]


class YacsConfig(dict):
    """Stands in for the yacs CfgNode the authors' training checkpoints pickle."""


def random_model(name: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = vmamba.create_model(name, **TINY, **kw).eval()
    with torch.no_grad():  # no default initialisation may hide a mix-up
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def authors_file(name: str, january_2024: bool = False) -> tuple[bytes, dict]:
    """A training checkpoint as the authors save it: {'model', 'model_ema', 'optimizer', ...}.
    Returns (file bytes, {'model': raw model, 'model_ema': EMA model})."""
    models = {"model": random_model(name, 1), "model_ema": random_model(name, 2)}
    states = {}
    for key, model in models.items():
        state = model.state_dict()
        if january_2024:
            for pattern, repl in _JAN_2024:
                state = {re.sub(pattern, repl, k): v for k, v in state.items()}
        states[key] = state
    buffer = io.BytesIO()
    torch.save({**states, "optimizer": {"state": {}}, "lr_scheduler": {}, "epoch": 299,
                "config": YacsConfig(MODEL="vssm")}, buffer)
    return buffer.getvalue(), models


def serve(server, tag: str, body: bytes | Reply) -> str:
    """Serve ``body`` where the mirror of ``tag``'s file is; returns the URL path."""
    path = "/" + get_weights(tag).release_path
    server.files[path] = body if isinstance(body, Reply) else Reply(body)
    return path


@pytest.fixture
def hub_env(tmp_path, monkeypatch, weights_server):
    """torch hub's cache in tmp_path; the release mirrored by the test server."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VMAMBA_WEIGHTS_MIRROR", weights_server.url)
    monkeypatch.setenv("VMAMBA_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.delenv("VMAMBA_WEIGHTS_DIR", raising=False)
    return weights_server


def cache_files() -> list[str]:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def same(a, b):
    with torch.no_grad():
        torch.testing.assert_close(a(X), b(X), rtol=0, atol=0)


# --- the zoo as data -------------------------------------------------------------------------

def test_every_zoo_model_has_published_weights_with_facts():
    tags = vmamba.list_models(pretrained=True)
    assert {t.split(".")[0] for t in tags} == set(vmamba.list_models())
    w = get_weights("vmamba_tiny_s1l8")  # the default tag
    assert w.name == "vmamba_tiny_s1l8.in1k" and w.metrics == {"top1": 82.6} and w.weights == "model"
    assert w.url == "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"
    assert w.preprocessing["crop_pct"] == 0.875 and w.preprocessing["interpolation"] == "bicubic"
    assert w.license == "mit" and w.paper == "arXiv:2401.10166"
    assert get_weights("vanilla_vmamba_tiny").weights == "model"  # trained without EMA
    assert get_weights("vanilla_vmamba_small").name == "vanilla_vmamba_small.in1k_ema"
    with pytest.raises(ValueError, match="published: vanilla_vmamba_tiny.in1k, vanilla_vmamba_tiny.coco"):
        get_weights("vanilla_vmamba_tiny.in1k_ema")


def test_mirror_replaces_the_release_base(monkeypatch):
    w = get_weights("vmamba_base_s2l15.in1k")
    monkeypatch.delenv("VMAMBA_WEIGHTS_MIRROR", raising=False)
    assert weights_url(w) == w.url
    monkeypatch.setenv("VMAMBA_WEIGHTS_MIRROR", "http://mirror.local/vmamba/")
    assert weights_url(w) == "http://mirror.local/vmamba/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"


# --- download, cache, verification -----------------------------------------------------------

def test_first_call_downloads_the_second_uses_the_cache(hub_env, capsys):
    body, models = authors_file("vanilla_vmamba_tiny", january_2024=True)
    path = serve(hub_env, "vanilla_vmamba_tiny.in1k", body)
    model = vmamba.create_model("vanilla_vmamba_tiny", pretrained=True, **TINY).eval()
    same(model, models["model"])  # v0 tiny was trained without EMA: the raw weights
    assert hub_env.requests == [path]
    assert cache_files() == ["vssmtiny_dp01_ckpt_epoch_292.pth"]
    again = vmamba.create_model("vanilla_vmamba_tiny.in1k", **TINY).eval()
    same(again, models["model"])
    assert hub_env.requests == [path]  # served from the cache
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["top1"] == 82.2


def test_tags_choose_the_raw_or_the_ema_weights(hub_env):
    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    same(vmamba.create_model("vmamba_tiny_s1l8.in1k_ema", **TINY).eval(), models["model_ema"])
    same(vmamba.create_model("vmamba_tiny_s1l8.in1k", **TINY).eval(), models["model"])
    assert len(hub_env.requests) == 1  # one file behind both tags


def test_new_head_and_features_keep_the_backbone(hub_env):
    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    ten = vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, num_classes=10, **TINY).eval()
    assert ten(X).shape == (1, 10)
    torch.testing.assert_close(ten.forward_features(X), models["model"].forward_features(X), rtol=0, atol=0)
    feats = vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, features_only=True, out_indices=(1, 3), **TINY)
    ref = models["model"].forward_intermediates(X, indices=[1, 3], intermediates_only=True)
    fresh = vmamba.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(1, 3), **TINY)
    got = feats.eval()(X)  # the outnorms are new (LayerNorm of the raw stage output)
    for g, r, norm in zip(got, ref, (fresh.outnorm1, fresh.outnorm3)):
        torch.testing.assert_close(g, norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_a_file_that_does_not_fit_is_not_kept(hub_env):
    body, _ = authors_file("vmamba_tiny_s2l5")  # ssm_ratio 2 where s1l8 has 1
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    with pytest.raises(DownloadError, match="(?s)does not load.*wrong shape") as e:
        vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY)
    assert str(torch.hub.get_dir()) in str(e.value)
    assert cache_files() == []


@pytest.mark.parametrize("failure, reply, message", [
    ("404", Reply(b"gone", status=404), "HTTP 404"),
    ("html page", Reply(b"<!DOCTYPE html><html>sign in</html>", content_type="text/html"), "web page"),
    ("html without type", Reply(b"\n<html>error</html>"), "web page"),
    ("truncated", "cut", "broke off"),
    ("timeout", "slow", "timed out"),
    ("empty", Reply(b""), "empty file"),
])
def test_every_download_failure_is_one_clear_error_and_leaves_no_file(hub_env, monkeypatch, failure, reply, message):
    body, _ = authors_file("vmamba_tiny_s1l8")
    if reply == "cut":
        reply = Reply(body, cut=len(body) // 3)
    elif reply == "slow":
        monkeypatch.setenv("VMAMBA_DOWNLOAD_TIMEOUT", "0.3")
        reply = Reply(body, delay=2.0)
    serve(hub_env, "vmamba_tiny_s1l8.in1k", reply)
    url = weights_url(get_weights("vmamba_tiny_s1l8.in1k"))
    expected_path = Path(torch.hub.get_dir()) / "checkpoints" / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    with pytest.raises(DownloadError, match=message) as e:
        vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, progress=False, **TINY)
    assert url in str(e.value) and f"put it at {expected_path}" in str(e.value)
    assert cache_files() == []


def test_refused_connection(hub_env, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VMAMBA_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=f"(?s)127.0.0.1:{port}/%23v0cls/.*no connection.*Download it by hand"):
        vmamba.create_model("vanilla_vmamba_tiny", pretrained=True, **TINY)
    assert cache_files() == []


def test_a_file_put_by_hand_or_in_a_weights_folder_is_used(hub_env, tmp_path, monkeypatch):
    body, models = authors_file("vmamba_tiny_s1l8")
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "vssm1_tiny_0230s_ckpt_epoch_264.pth").write_bytes(body)
    monkeypatch.setenv("VMAMBA_WEIGHTS_DIR", str(folder))
    same(vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY).eval(), models["model"])
    monkeypatch.delenv("VMAMBA_WEIGHTS_DIR")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    same(vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY).eval(), models["model"])
    assert hub_env.requests == []


# --- one loader, every source ------------------------------------------------------------------

def test_load_returns_model_and_preprocessing_for_every_source(hub_env, tmp_path):
    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    model, prep, weights = vmamba.load("vmamba_tiny_s1l8.in1k", **TINY)
    assert weights.metrics == {"top1": 82.6}
    assert (prep.img_size, prep.crop_pct, prep.interpolation) == (224, 0.875, "bicubic")
    assert prep.label_names[0] == "n01440764" and prep.class_name(0).startswith("tench")

    authors = tmp_path / "authors.pth"
    authors.write_bytes(body)
    with pytest.raises(vmamba.CheckpointError, match="stores no model config.*--model"):
        vmamba.load(authors)
    same(vmamba.load(authors, model="vmamba_tiny_s1l8", use_ema=False, **TINY).model.eval(), models["model"])
    same(vmamba.load(authors, model="vmamba_tiny_s1l8", **TINY).model.eval(), models["model_ema"])  # EMA when present

    folder = vmamba.save_pretrained(models["model"], tmp_path / "folder", label_names=[str(i) for i in range(1000)])
    loaded = vmamba.load(folder)
    same(loaded.model.eval(), models["model"])
    assert loaded.preprocessing.label_names[:2] == ("0", "1")

    saved = vmamba.save_weights(models["model"], tmp_path / "mine.safetensors")
    hub_env.files["/files/mine.safetensors"] = Reply(saved.read_bytes())
    url = hub_env.url + "files/mine.safetensors"
    same(vmamba.load(url).model.eval(), models["model"])
    same(vmamba.create_model(url).eval(), models["model"])
    assert hub_env.requests.count("/files/mine.safetensors") == 1 and "mine.safetensors" in cache_files()

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        vmamba.load(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*no such file, folder or URL"):
        vmamba.load("resnet50")


def test_a_file_holding_another_architecture_is_refused(tmp_path):
    path = vmamba.save_weights(random_model("vanilla_vmamba_tiny", 0), tmp_path / "v0.safetensors")
    with pytest.raises(vmamba.CheckpointError, match="holds a vanilla_vmamba_tiny .*not 'vmamba_tiny_s1l8'"):
        vmamba.load(path, model="vmamba_tiny_s1l8")


def test_the_models_package_does_not_load_files():
    import ast

    models = Path(vmamba.models.__file__).parent
    for path in models.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..x import ...
                assert node.module == "ops", f"{path.name} imports ..{node.module}: models/ must not load files"


# --- the other routes: torch.hub, timm, the CLI, fine-tuning ----------------------------------

def test_torch_hub_load(hub_env):
    body, models = authors_file("vmamba_tiny_s2l5")
    serve(hub_env, "vmamba_tiny_s2l5.in1k", body)
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "vmamba_tiny_s2l5", source="local", pretrained=True, **TINY)
    same(model.eval(), models["model"])


def test_timm_create_model_with_tags(hub_env, timm_module):
    timm = timm_module
    vmamba.register_timm_models()
    assert "vmamba_tiny_s1l8.in1k" in timm.list_models(pretrained=True)
    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    same(timm.create_model("vmamba_tiny_s1l8.in1k_ema", pretrained=True, **TINY).eval(), models["model_ema"])
    same(timm.create_model("vmamba_tiny_s1l8", pretrained=True, **TINY).eval(), models["model"])
    assert timm.create_model("vmamba_tiny_s1l8", **TINY).pretrained_cfg["architecture"] == "vmamba_tiny_s1l8"


def test_predict_prints_imagenet_class_names(hub_env, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from vmamba.cli import main
    from vmamba.models.vmamba import ZOO
    from vmamba.pretrained import imagenet_classes
    from vmamba.train.transforms import EvalTransform, normalize

    monkeypatch.setitem(ZOO, "vmamba_tiny_s1l8", {**ZOO["vmamba_tiny_s1l8"], **TINY})  # the CLI builds it small
    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    image = tmp_path / "cat.png"
    Image.new("RGB", (80, 60), (200, 120, 40)).save(image)
    assert main(["predict", "vmamba_tiny_s1l8.in1k", str(image)]) == 0
    out = capsys.readouterr().out.splitlines()
    x = EvalTransform(224, 3, 0.875, "bicubic")(Image.open(image).convert("RGB"))
    with torch.no_grad():
        logits = models["model"](normalize(x[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    top = logits.softmax(-1).topk(5).indices[0].tolist()
    names = imagenet_classes()[1]
    assert out[0] == str(image) and len(out) == 6
    assert [line.split("%  ", 1)[1] for line in out[1:]] == [names[i] for i in top]


@pytest.mark.slow  # a whole (tiny) training run: imports dynamo and matplotlib
def test_fine_tuning_from_published_weights_with_a_new_head(hub_env, tmp_path):
    from PIL import Image

    from vmamba.train import make_config, train

    body, models = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    for split in ("train", "val"):  # a 2-class RGB ImageFolder, 4 images per class
        for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), tuple(c + 8 * i for c in colour)).save(tmp_path / "data" / split / label / f"{i}.png")
    cfg = make_config("default", data=str(tmp_path / "data"), model="vmamba_tiny_s1l8", pretrained=True,
                      model_args=dict(TINY), in_chans=3, img_size=32, epochs=1, max_steps_per_epoch=2, batch_size=4,
                      out=str(tmp_path / "run"), workers=0, progress=False, ema=False)
    train(cfg)
    tuned = vmamba.load(tmp_path / "run" / "model.safetensors").model
    assert tuned.num_classes == 2 and tuned.in_chans == 3
    # the blocks start from the published weights (two small steps move them only a little)
    start, now = models["model"].layers[2].blocks[0].op.A_logs, tuned.layers[2].blocks[0].op.A_logs
    assert (now - start).abs().max() < 0.05 < (random_model("vmamba_tiny_s1l8", 5).layers[2].blocks[0].op.A_logs
                                               - start).abs().max()


def test_erf_refuses_a_checkpoint_of_another_architecture(tmp_path, capsys):
    from vmamba.cli import main

    path = vmamba.save_weights(random_model("vanilla_vmamba_tiny", 0), tmp_path / "v0.safetensors")
    with pytest.raises(SystemExit) as e:
        main(["erf", "vmamba_tiny_s1l8", "--checkpoint", str(path), "--peers", "--size", "32", "--count", "1",
              "--out", str(tmp_path / "erf")])
    assert e.value.code == 2
    assert "holds a vanilla_vmamba_tiny" in capsys.readouterr().err and not (tmp_path / "erf").exists()


def test_eval_of_a_published_tag_on_an_imagenet_style_folder(hub_env, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from vmamba.cli import main
    from vmamba.models.vmamba import ZOO

    monkeypatch.setitem(ZOO, "vmamba_tiny_s1l8", {**ZOO["vmamba_tiny_s1l8"], **TINY})
    body, _ = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    for wnid, colour in (("n01440764", (200, 30, 30)), ("n01443537", (20, 200, 90))):
        (tmp_path / "imagenet" / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (64, 48), colour).save(tmp_path / "imagenet" / "val" / wnid / "ILSVRC2012_val_1.JPEG")
    assert main(["eval", "vmamba_tiny_s1l8.in1k", "--data", str(tmp_path / "imagenet"), "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 2 and res["reported"] == {"top1": 82.6, "name": "vmamba_tiny_s1l8.in1k"}
    assert set(res["per_class"]) == {"n01440764", "n01443537"}
    assert main(["eval", "vmamba_tiny_s1l8.in1k", "--data", str(tmp_path / "imagenet")]) == 0
    assert "the authors report top-1 82.6% for vmamba_tiny_s1l8.in1k" in capsys.readouterr().out


class MessageHub(dict):
    """Stands in for the mmengine message hub that mmengine checkpoints pickle."""


def test_published_detection_checkpoint_loads_strictly_into_a_detector(hub_env, monkeypatch):
    from vmamba.dense import load_dense_checkpoint, read_dense_checkpoint
    from vmamba.models.vmamba import ZOO

    monkeypatch.setitem(ZOO, "vmamba_tiny_s1l8", {**ZOO["vmamba_tiny_s1l8"], **TINY})

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = vmamba.create_model("vmamba_tiny_s1l8", features_only=True)
            self.neck = torch.nn.Conv2d(16, 8, 1)

    torch.manual_seed(3)
    trained = Detector()
    buffer = io.BytesIO()
    torch.save({"meta": {"epoch": 12, "mmengine_version": "0.10.4"}, "message_hub": MessageHub(log={}),
                "state_dict": {f"{k}": v for k, v in trained.state_dict().items()}}, buffer)
    path = serve(hub_env, "vmamba_tiny_s1l8.coco_mask_rcnn_1x", buffer.getvalue())
    with pytest.raises(ValueError, match="detection checkpoint.*load_dense_checkpoint"):
        vmamba.create_model("vmamba_tiny_s1l8.coco_mask_rcnn_1x")

    fresh = Detector()
    assert load_dense_checkpoint(fresh, "vmamba_tiny_s1l8.coco_mask_rcnn_1x") == ([], [])
    for (k, a), b in zip(fresh.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    contents = read_dense_checkpoint("vmamba://vmamba_tiny_s1l8.coco_mask_rcnn_1x")  # mmengine's load_from
    assert set(contents["state_dict"]) == set(trained.state_dict())
    assert hub_env.requests == [path] and cache_files() == ["mask_rcnn_vssm_fpn_coco_tiny_s_epoch_12.pth"]


def test_a_good_file_is_kept_when_only_the_overrides_do_not_fit(hub_env, monkeypatch):
    from vmamba.models.vmamba import ZOO

    monkeypatch.setitem(ZOO, "vmamba_tiny_s1l8", {**ZOO["vmamba_tiny_s1l8"], **TINY})
    body, _ = authors_file("vmamba_tiny_s1l8")
    serve(hub_env, "vmamba_tiny_s1l8.in1k", body)
    with pytest.raises(vmamba.CheckpointError, match=r"(?s)vmamba_tiny_s1l8.in1k does not fit vmamba_tiny_s1l8 built "
                                                     r"with \{'in_chans': 1\}.*wrong shape") as e:
        vmamba.create_model("vmamba_tiny_s1l8", pretrained=True, in_chans=1)
    assert not isinstance(e.value, DownloadError)
    assert cache_files() == ["vssm1_tiny_0230s_ckpt_epoch_264.pth"]  # the file itself was fine
