"""Dense prediction: the MMDetection / MMSegmentation integration (vmamba.mmdet, vmamba.mmseg).

Tests that need the OpenMMLab stack skip cleanly without it (install: scripts/install_mm.sh);
the generated data, the config listing and the import boundary are checked everywhere.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vmamba
from vmamba import CheckpointError
from vmamba.dense import config_path, list_configs
from vmamba.dense.data import CLASSES, make_instance_dataset, make_semantic_dataset
from vmamba.models import get_weights
from vmamba.models.vmamba import ZOO

ODD_SIZES = [(65, 97), (33, 50)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these steps are small, and on a 2-core machine shared with other jobs
    two OpenMP threads stall whenever a core is taken (5-10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _require_mm():
    for name in ("mmengine", "mmcv", "mmdet", "mmseg"):
        pytest.importorskip(name, reason="the OpenMMLab stack is optional (scripts/install_mm.sh)")
    if importlib.util.find_spec("mmcv.ops") is None or importlib.util.find_spec("mmcv._ext") is None:
        pytest.skip("mmcv without compiled ops (mmcv-lite): Mask R-CNN needs RoIAlign/nms")


@pytest.fixture(scope="module")
def mmdet_models():
    _require_mm()
    import vmamba.mmdet  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return MODELS


@pytest.fixture(scope="module")
def mmseg_models():
    _require_mm()
    import vmamba.mmseg  # noqa: F401
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return MODELS


# --- no OpenMMLab needed ---------------------------------------------------------------------

def test_base_package_never_imports_openmmlab():
    code = ("import sys, vmamba, vmamba.dense, vmamba.dense.data, vmamba.cli.dense; "
            "bad = sorted(m for m, mod in sys.modules.items() if mod is not None "
            "and m.split('.')[0] in ('mmdet', 'mmseg', 'mmcv', 'mmengine')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_instance_dataset_is_valid_coco_and_deterministic(tmp_path):
    a = make_instance_dataset(tmp_path / "a", n_train=6, n_val=3, size=(64, 96), seed=3)
    b = make_instance_dataset(tmp_path / "b", n_train=6, n_val=3, size=(64, 96), seed=3)
    for split in ("train", "val"):
        ja, jb = (json.loads(Path(x[split]["ann_file"]).read_text()) for x in (a, b))
        assert ja == jb
        assert [c["name"] for c in ja["categories"]] == list(CLASSES)
        assert len(ja["images"]) == a[split]["images"] and ja["annotations"]
        for ann in ja["annotations"]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 64 and w >= 19 and h >= 19
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(poly.min(0), [x, y], atol=0.01) and np.allclose(poly.max(0), [x + w, y + h], atol=0.01)
            assert 0 < ann["area"] <= w * h + 1e-6 and ann["iscrowd"] == 0
        for img in ja["images"]:
            pa = Path(a[split]["img_dir"]) / img["file_name"]
            pb = Path(b[split]["img_dir"]) / img["file_name"]
            assert pa.read_bytes() == pb.read_bytes()


def test_semantic_dataset_labels_match_shapes(tmp_path):
    from PIL import Image

    info = make_semantic_dataset(tmp_path, n_train=3, n_val=2, size=(64, 96))
    labels = [np.asarray(Image.open(p)) for p in sorted(Path(info["train"]["ann_dir"]).glob("*.png"))]
    images = [np.asarray(Image.open(p)) for p in sorted(Path(info["train"]["img_dir"]).glob("*.png"))]
    assert len(labels) == 3 and all(lab.shape == (64, 96) and img.shape == (64, 96, 3) for lab, img in zip(labels, images))
    values = np.unique(np.concatenate([lab.ravel() for lab in labels]))
    assert values[0] == 0 and set(values) <= {0, 1, 2, 3} and len(values) > 1


def test_shipped_configs_listed():
    configs = list_configs()
    for name in ["vanilla_vmamba_tiny", "vanilla_vmamba_small", "vanilla_vmamba_base",
                 "vmamba_tiny_s1l8", "vmamba_tiny_s2l5", "vmamba_small_s2l15", "vmamba_base_s2l15"]:
        assert f"mmdet/mask_rcnn_{name}_fpn_1x_coco" in configs
        assert f"mmdet/mask_rcnn_{name}_fpn_ms-crop-3x_coco" in configs
        assert f"mmseg/upernet_{name}_8xb2-160k_ade20k-512x512" in configs
    assert config_path("mask_rcnn_vmamba_demo_shapes").is_file()
    with pytest.raises(ValueError, match="no unique shipped config"):
        config_path("vmamba_tiny")
    out = subprocess.run([sys.executable, "-m", "vmamba", "dense", "configs", "upernet_vmamba_demo_shapes"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip().endswith("mmseg/upernet_vmamba_demo_shapes.py")


def test_hide_broken_turns_a_crashing_import_into_importerror(tmp_path, monkeypatch):
    from vmamba.dense.compat import hide_broken

    (tmp_path / "vmamba_fake_broken.py").write_text("raise RuntimeError('operator does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with hide_broken("vmamba_fake_broken", "json") as hidden:
        assert hidden == ["vmamba_fake_broken"]
        with pytest.raises(ImportError):
            import vmamba_fake_broken  # noqa: F401
    assert "vmamba_fake_broken" not in sys.modules


# --- backbone ---------------------------------------------------------------------------------

def _expected_hw(arch: str, h: int, w: int) -> list[tuple[int, int]]:
    """Stage resolutions: v1 stem = 4x4 conv stride 4 (floor), v2 stem = two 3x3 stride-2
    convs (ceil); every downsample halves rounding up (padded merging / 3x3 stride-2 conv)."""
    v2 = ZOO[arch]["patch_embed_version"] == "v2"
    hw = (math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)) if v2 else (h // 4, w // 4)
    out = [hw]
    for _ in range(3):
        hw = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
        out.append(hw)
    return out


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_every_zoo_backbone_shapes_and_strides(mmdet_models, arch):
    # Depth 1 per stage keeps the test fast; stem, downsamplers, widths and norms are the
    # zoo model's own, and blocks never change shapes (the full depth is checked below).
    torch.manual_seed(0)
    dims = ZOO[arch]["dims"]
    model = mmdet_models.build(dict(type=arch, depths=(1, 1, 1, 1))).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [dims, 2 * dims, 4 * dims, 8 * dims]
    for h, w in ODD_SIZES:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, h, w))
        assert [tuple(o.shape) for o in outs] == [
            (1, c, *hw) for c, hw in zip(model.feature_info.channels(), _expected_hw(arch, h, w))]
        assert all(torch.isfinite(o).all() for o in outs)
    some = mmdet_models.build(dict(type="VMamba", arch=arch, depths=(1, 1, 1, 1), out_indices=(1, 3))).eval()
    with torch.no_grad():
        outs = some(torch.randn(1, 3, 65, 97))
    assert [o.shape[1] for o in outs] == [2 * dims, 8 * dims]
    assert not hasattr(some, "outnorm0") and hasattr(some, "outnorm3")


def test_full_depth_backbone_equals_core_features_model(mmdet_models):
    torch.manual_seed(0)
    mm = mmdet_models.build(dict(type="vmamba_tiny_s1l8")).eval()
    core = vmamba.create_model("vmamba_tiny_s1l8", features_only=True).eval()
    core.load_state_dict(mm.state_dict())
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        for a, b in zip(mm(x), core(x)):
            torch.testing.assert_close(a, b)
    assert sum(p.numel() for p in mm.parameters()) == sum(p.numel() for p in core.parameters())


def test_frozen_stages(mmdet_models):
    model = mmdet_models.build(dict(type="vmamba_tiny_s2l5", dims=16, depths=(1, 1, 1, 1), frozen_stages=2))
    model.train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.outnorm0, model.outnorm1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen)
    assert all(p.requires_grad for m in (model.layers[2], model.outnorm2, model.layers[3]) for p in m.parameters())
    assert model.layers[2].training
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert model.layers[0].blocks[0].op.A_logs.grad is None
    assert model.layers[2].blocks[0].op.A_logs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="frozen_stages"):
        mmdet_models.build(dict(type="vmamba_tiny_s2l5", frozen_stages=5))


def _authors_classification_file(path, model, legacy=False):
    """A training checkpoint as the authors' release writes it (their key names)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    if legacy:  # the January-2024 names of the v0 weights
        rename = lambda k: re.sub(r"(blocks\.\d+)\.norm\.", r"\1.ln_1.", (  # noqa: E731
            k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
             .replace(".op.", ".self_attention.")
             .replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")))
        state, ema = ({rename(k): v for k, v in s.items()} for s in (state, ema))
    torch.save({"model": state, "model_ema": ema, "epoch": 299}, path)
    return ema


@pytest.mark.parametrize("arch,legacy", [("vmamba_tiny_s1l8", False), ("vanilla_vmamba_tiny", True)])
def test_init_cfg_from_authors_classification_checkpoint_with_ema(mmdet_models, tmp_path, arch, legacy):
    small = dict(dims=16, depths=(1, 1, 2, 1))
    cls = vmamba.create_model(arch, num_classes=7, **small)
    path = tmp_path / "cls.pth"
    _authors_classification_file(path, cls, legacy=legacy)
    for use_ema, shift in ((False, 0.0), (True, 0.5)):
        bb = mmdet_models.build(dict(type=arch, **small, init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                                                     use_ema=use_ema)))
        fresh_norm = bb.outnorm2.weight.clone()
        bb.init_weights()
        want = cls.layers[2].blocks[1].op.A_logs + shift
        torch.testing.assert_close(bb.layers[2].blocks[1].op.A_logs, want)
        torch.testing.assert_close(bb.patch_embed[0].weight, cls.patch_embed[0].weight + shift)
        torch.testing.assert_close(bb.outnorm2.weight, fresh_norm)  # not in a classification file


def test_init_cfg_from_project_checkpoint_and_pretrained_alias(mmdet_models, tmp_path):
    cls = vmamba.create_model("vmamba_tiny_s2l5", num_classes=5, dims=16, depths=(1, 1, 1, 1))
    path = vmamba.save_weights(cls, tmp_path / "ours.safetensors")
    bb = mmdet_models.build(dict(type="vmamba_tiny_s2l5", dims=16, depths=(1, 1, 1, 1), pretrained=str(path)))
    bb.init_weights()
    torch.testing.assert_close(bb.layers[3].blocks[0].mlp.fc2.weight, cls.layers[3].blocks[0].mlp.fc2.weight)


def test_init_cfg_that_does_not_fit_raises_clearly(mmdet_models, tmp_path):
    cls = vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 2, 1))
    path = tmp_path / "cls.pth"
    _authors_classification_file(path, cls)
    bb = mmdet_models.build(dict(type="vmamba_tiny_s1l8", dims=24, depths=(1, 1, 3, 1),
                                 init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    with pytest.raises(CheckpointError, match=r"cls\.pth: cannot initialise") as err:
        bb.init_weights()
    msg = str(err.value)
    assert "wrong shape" in msg and "patch_embed" in msg and "layers.2.blocks.2" in msg
    with pytest.raises(FileNotFoundError):
        mmdet_models.build(dict(type="vmamba_tiny_s1l8", dims=16, depths=(1, 1, 2, 1),
                                pretrained=str(tmp_path / "absent.pth"))).init_weights()


# --- detector / segmentor -----------------------------------------------------------------------

def _small_cfg(kind: str, data_root: Path):
    from vmamba.dense.demo import load_config

    cfg = load_config(config_path("mmdet/mask_rcnn_vmamba_demo_shapes" if kind == "det"
                                  else "mmseg/upernet_vmamba_demo_shapes"))
    root = str(data_root) + "/"
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = root
        loader.batch_size = 2
    cfg.model.backbone.update(dims=16, depths=(1, 1, 1, 1))
    if kind == "det":
        cfg.model.neck.in_channels = [16, 32, 64, 128]
        cfg.val_dataloader.dataset.pipeline[1].scale = cfg.train_dataloader.dataset.pipeline[2].scale = (96, 64)
    else:
        cfg.model.decode_head.in_channels = [16, 32, 64, 128]
        cfg.model.auxiliary_head.in_channels = 64
    return cfg


@pytest.fixture(scope="module")
def det_setup(mmdet_models, tmp_path_factory):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    root = tmp_path_factory.mktemp("coco")
    make_instance_dataset(root, n_train=2, n_val=2, size=(64, 96))
    cfg = _small_cfg("det", root)
    torch.manual_seed(0)
    model = mmdet_models.build(cfg.model)
    model.init_weights()
    with DefaultScope.overwrite_default_scope("mmdet"):
        train_batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
        val_batch = next(iter(Runner.build_dataloader(cfg.val_dataloader)))
    return cfg, model, train_batch, val_batch


def _train_step_reaches_backbone(model, batch):
    model.train()
    model.zero_grad()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode="loss")
    loss, log = model.parse_losses(losses)
    assert torch.isfinite(loss) and all(math.isfinite(float(v)) for v in log.values())
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.backbone.patch_embed[0].weight.grad.abs().sum() > 0
    assert model.backbone.layers[0].blocks[0].op.A_logs.grad.abs().sum() > 0
    return log


def test_mask_rcnn_train_step_and_inference(det_setup):
    cfg, model, train_batch, val_batch = det_setup
    log = _train_step_reaches_backbone(model, train_batch)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(log)
    model.eval()
    with torch.no_grad():
        results = model.test_step(val_batch)
    assert len(results) == 2
    for sample in results:
        pred = sample.pred_instances
        n = len(pred.bboxes)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == (n,) and (pred.labels < 3).all()
        assert tuple(pred.masks.shape) == (n, *sample.ori_shape)


def test_upernet_train_step_and_inference(mmseg_models, tmp_path):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    make_semantic_dataset(tmp_path, n_train=2, n_val=2, size=(64, 96))
    cfg = _small_cfg("seg", tmp_path)
    torch.manual_seed(0)
    model = mmseg_models.build(cfg.model)
    model.init_weights()
    with DefaultScope.overwrite_default_scope("mmseg"):
        train_batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
        val_batch = next(iter(Runner.build_dataloader(cfg.val_dataloader)))
    log = _train_step_reaches_backbone(model, train_batch)
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(log)
    model.eval()
    with torch.no_grad():
        results = model.test_step(val_batch)
    assert [tuple(r.seg_logits.data.shape) for r in results] == [(4, 64, 96)] * 2
    assert [tuple(r.pred_sem_seg.data.shape) for r in results] == [(1, 64, 96)] * 2


def _mmengine_style_checkpoint(path, model):
    """What mmengine's CheckpointHook writes: meta, state_dict, message hub with HistoryBuffers."""
    from mmengine.logging import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(0.5)
    torch.save({"meta": {"epoch": 12, "iter": 100, "dataset_meta": {"classes": CLASSES}},
                "state_dict": model.state_dict(),
                "message_hub": {"log_scalars": {"train/loss": buf}, "runtime_info": {"iter": 100}}}, path)


def _legacy_authors_keys(state: dict) -> dict:
    """Backbone keys in the January-2024 names of the v0 release (what older files carry)."""
    out = {}
    for k, v in state.items():
        if k.startswith("backbone."):
            k = k.replace("backbone.patch_embed.0.", "backbone.patch_embed.proj.").replace(".op.", ".self_attention.")
        out[k] = v
    return out


def test_detection_checkpoint_round_trip(det_setup, mmdet_models, tmp_path):
    from mmengine.runner import load_checkpoint as mm_load_checkpoint

    cfg, model, _, val_batch = det_setup
    model.eval()
    with torch.no_grad():
        want = model.test_step(val_batch)[0].pred_instances
    path = tmp_path / "mask_rcnn_vmamba.pth"
    _mmengine_style_checkpoint(path, model)

    from vmamba.dense import load_dense_checkpoint

    for loader in ("vmamba", "mmengine"):
        torch.manual_seed(1)
        fresh = mmdet_models.build(cfg.model).eval()
        if loader == "vmamba":
            assert load_dense_checkpoint(fresh, path) == ([], [])
        else:  # the OpenMMLab tools' path (load_from / tools/test.py), weights-only torch.load
            mm_load_checkpoint(fresh, str(path), map_location="cpu", strict=True)
        with torch.no_grad():
            got = fresh.test_step(val_batch)[0].pred_instances
        torch.testing.assert_close(got.bboxes, want.bboxes)
        torch.testing.assert_close(got.masks, want.masks)

    # the backbone part of a dense checkpoint also initialises a bare backbone, outnorms included
    bb = mmdet_models.build(dict(cfg.model.backbone, init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    bb.init_weights()
    torch.testing.assert_close(bb.outnorm1.bias, model.backbone.outnorm1.bias)


def test_authors_vanilla_detection_checkpoint_with_old_key_names(mmdet_models, det_setup, tmp_path):
    from mmengine.runner import load_checkpoint as mm_load_checkpoint

    from vmamba.dense import load_dense_checkpoint

    cfg = copy.deepcopy(det_setup[0])
    cfg.model.backbone.type = "vanilla_vmamba_tiny"
    torch.manual_seed(0)
    model = mmdet_models.build(cfg.model)
    path = tmp_path / "vssmtiny_mask_rcnn.pth"
    torch.save({"state_dict": _legacy_authors_keys(model.state_dict()), "meta": {}}, path)
    for load in (lambda m: load_dense_checkpoint(m, path),
                 lambda m: mm_load_checkpoint(m, str(path), map_location="cpu", strict=True)):
        torch.manual_seed(1)
        fresh = mmdet_models.build(cfg.model)
        load(fresh)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(fresh.state_dict()[k], v, msg=k)


def test_mismatched_detection_checkpoint_raises_clear_error(det_setup, mmdet_models, tmp_path):
    from vmamba.dense import load_dense_checkpoint

    cfg, model, _, _ = det_setup
    path = tmp_path / "det.pth"
    _mmengine_style_checkpoint(path, model)

    deeper = copy.deepcopy(cfg)
    deeper.model.backbone.depths = (1, 1, 2, 1)
    with pytest.raises(CheckpointError) as err:
        load_dense_checkpoint(mmdet_models.build(deeper.model), path)
    msg = str(err.value)
    assert "det.pth: its backbone.* weights do not fit" in msg and "missing from the checkpoint" in msg
    assert "layers.2.blocks.1.op.A_logs" in msg

    wider = copy.deepcopy(cfg)
    wider.model.backbone.dims = 24
    wider.model.neck.in_channels = [24, 48, 96, 192]
    with pytest.raises(CheckpointError, match=r"wrong shape[\s\S]*patch_embed\.0\.weight"):
        load_dense_checkpoint(mmdet_models.build(wider.model), path)

    more_classes = copy.deepcopy(cfg)
    more_classes.model.roi_head.bbox_head.num_classes = 5
    more_classes.model.roi_head.mask_head.num_classes = 5
    fresh = mmdet_models.build(more_classes.model)
    with pytest.raises(CheckpointError, match=r"non-backbone weights do not fit[\s\S]*roi_head\.bbox_head\.fc_cls\.weight"):
        load_dense_checkpoint(fresh, path)
    report = load_dense_checkpoint(fresh, path, exclude=["roi_head.bbox_head.fc_cls", "roi_head.bbox_head.fc_reg",
                                                         "roi_head.mask_head.conv_logits"])
    assert report == ([], [])
    torch.testing.assert_close(fresh.neck.lateral_convs[0].conv.weight, model.neck.lateral_convs[0].conv.weight)

    cls_path = tmp_path / "cls.pth"
    torch.save({"model": vmamba.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1)).state_dict()}, cls_path)
    with pytest.raises(CheckpointError, match="no 'backbone.\\*' weights"):
        load_dense_checkpoint(fresh, cls_path)


def test_paper_configs_match_the_zoo(mmdet_models, mmseg_models):
    from vmamba.dense.demo import load_config

    for name in list_configs():
        if "demo" in name:
            continue
        cfg = load_config(config_path(name))
        bb = cfg.model.backbone
        dims = ZOO[bb.type]["dims"]
        chans = [dims, 2 * dims, 4 * dims, 8 * dims]
        assert set(bb) == {"type", "out_indices", "drop_path_rate", "init_cfg"}, name  # no Swin leftovers
        assert bb.init_cfg.type == "Pretrained" and bb.init_cfg.checkpoint == f"vmamba://{get_weights(bb.type).name}"
        if name.startswith("mmdet/"):
            assert cfg.model.neck.in_channels == chans
            assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr == 1e-4
            assert cfg.train_cfg.max_epochs == (36 if "3x" in name else 12)
        else:
            assert cfg.model.decode_head.in_channels == chans and cfg.model.auxiliary_head.in_channels == chans[2]
            assert cfg.optim_wrapper.optimizer.lr == 6e-5 and cfg.train_cfg.max_iters == 160000
            assert cfg.train_dataloader.dataset.pipeline[2].scale == (2048, 512)
    # one paper detector built in full (the backbone from scratch), a forward in loss mode
    cfg = load_config(config_path("mask_rcnn_vmamba_tiny_s1l8_fpn_1x_coco"))
    cfg.model.backbone.init_cfg = None
    model = mmdet_models.build(cfg.model)
    assert model.backbone.arch == "vmamba_tiny_s1l8" and model.roi_head.bbox_head.num_classes == 80
    feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 24), (1, 256, 8, 12), (1, 256, 4, 6), (1, 256, 2, 3), (1, 256, 1, 2)]


def test_train_and_test_commands_on_the_demo_config(det_setup, tmp_path):
    """`vmamba dense train` / `test`: the toolkit's Runner, evaluator and checkpoint, end to end."""
    from vmamba.dense.demo import test as dense_test
    from vmamba.dense.demo import train as dense_train

    root = det_setup[0].train_dataloader.dataset.data_root
    options = {"model.backbone.dims": 16, "model.backbone.depths": (1, 1, 1, 1),
               "model.neck.in_channels": [16, 32, 64, 128], "train_cfg.max_iters": 2,
               "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 2,
               "train_dataloader.dataset.pipeline.2.scale": (96, 64), "test_dataloader.dataset.pipeline.1.scale": (96, 64)}
    for split in ("train", "val", "test"):
        options[f"{split}_dataloader.dataset.data_root"] = root
    for split in ("val", "test"):
        options[f"{split}_evaluator.ann_file"] = root + "annotations/instances_val.json"
    options["val_dataloader.dataset.pipeline.1.scale"] = (96, 64)
    dense_train("mask_rcnn_vmamba_demo_shapes", tmp_path / "run", options)
    ckpt = tmp_path / "run" / "iter_2.pth"
    assert ckpt.is_file()
    metrics = dense_test("mmdet/mask_rcnn_vmamba_demo_shapes", ckpt, tmp_path / "eval", options)
    assert {"coco/bbox_mAP", "coco/segm_mAP"} <= set(metrics)
    assert all(-1 <= float(metrics[k]) <= 1 for k in ("coco/bbox_mAP", "coco/segm_mAP"))
    bad = dict(options, **{"model.backbone.depths": (1, 1, 2, 1)})
    with pytest.raises(CheckpointError, match="iter_2.pth: its backbone.* weights do not fit"):
        dense_test("mmdet/mask_rcnn_vmamba_demo_shapes", ckpt, tmp_path / "eval2", bad)
