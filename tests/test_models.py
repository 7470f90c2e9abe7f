"""The model zoo: golden equality with the authors' release, sizes, and the timm-style API."""
from __future__ import annotations

import json

import pytest
import torch

import vmamba
from conftest import GOLDEN, load_golden
from vmamba.models import VSSM, VSSMFeatures

SPEC_PARAMS = {  # the authors' release (paper, tables of model sizes)
    "vanilla_vmamba_tiny": 22_893_448, "vanilla_vmamba_small": 44_417_416, "vanilla_vmamba_base": 76_254_056,
    "vmamba_tiny_s1l8": 30_249_064, "vmamba_small_s1l20": 49_012_840, "vmamba_base_s1l20": 86_614_504,
    "vmamba_tiny_s2l5": 30_705_832, "vmamba_small_s2l15": 50_147_752, "vmamba_base_s2l15": 88_557_800,
}
GOLDEN_FILES = ["golden_v0_tiny_small.pt", "golden_v2_tiny_small.pt"]
SMALL = dict(depths=(1, 1, 2, 1), dims=16)


def small_model(name="vmamba_tiny_s1l8", **kw):
    torch.manual_seed(0)
    return vmamba.create_model(name, **{**SMALL, "num_classes": 7, **kw})


def test_registry_has_the_zoo():
    assert vmamba.list_models() == sorted(SPEC_PARAMS)
    assert vmamba.list_models("vanilla_*") == ["vanilla_vmamba_base", "vanilla_vmamba_small", "vanilla_vmamba_tiny"]


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_count_equals_spec(name):
    model = vmamba.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == SPEC_PARAMS[name]


@pytest.mark.parametrize("name, keys_file", [("vanilla_vmamba_tiny", "official_keys_v0_tiny.json"),
                                              ("vmamba_tiny_s1l8", "official_keys_v2_tiny.json")])
def test_state_dict_keys_and_shapes_equal_the_authors(name, keys_file):
    official = json.loads((GOLDEN / keys_file).read_text())
    ours = {k: list(v.shape) for k, v in vmamba.create_model(name).state_dict().items()}
    assert ours == official


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_every_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = vmamba.create_model(name, num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


def _capture(model):
    """Forward hooks recording the intermediate tensors the golden files hold (as NCHW)."""
    seen = {"blocks": []}
    nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    model.patch_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("patch_embed", nchw(o)))
    op = model.layers[0].blocks[0].op
    op.register_forward_hook(lambda m, i, o: seen.update(ss2d_in=nchw(i[0]), ss2d_out=nchw(o)))
    for stage in model.layers:
        for block in stage.blocks:
            block.register_forward_hook(lambda m, i, o: seen["blocks"].append(nchw(o)))
    return seen


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("golden_file", GOLDEN_FILES)
def test_golden_model(golden_file, backend):
    """The authors' randomised small models: every intermediate within 1e-4 (fp32)."""
    g = load_golden(golden_file)
    model = vmamba.from_official_config(g["config"], scan_backend=backend).eval()
    vmamba.load_checkpoint(model, g["state_dict"])
    seen = _capture(model)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # noqa: E731
    with torch.no_grad():
        close(model(g["input"]), g["logits"])
        close(seen["patch_embed"], g["patch_embed"])
        close(seen["ss2d_in"], g["first_ss2d_in"])
        close(seen["ss2d_out"], g["first_ss2d_out"])
        for a, b in zip(seen["blocks"], g["block_outputs"], strict=True):
            close(a, b)
        for a, b in zip(model.forward_intermediates(g["input"], intermediates_only=True), g["features"], strict=True):
            close(a, b)
        close(model(g["input_nonsquare"]), g["logits_nonsquare"])
        feats = model.forward_intermediates(g["input_nonsquare"], intermediates_only=True)
        for a, b in zip(feats, g["features_nonsquare"], strict=True):
            close(a, b)


@pytest.mark.parametrize("golden_file", GOLDEN_FILES)
def test_golden_model_gradients_agree_across_backends(golden_file):
    g = load_golden(golden_file)
    grads = {}
    for backend in ("torch", "reference"):
        model = vmamba.from_official_config(g["config"], scan_backend=backend).double()
        vmamba.load_checkpoint(model, g["state_dict"])
        model.train(False)
        model(g["input"][:1, :, :32, :48].double()).sum().backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads["torch"].items():
        torch.testing.assert_close(grad, grads["reference"][name], rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("name", ["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"])
@pytest.mark.parametrize("size", [(33, 47), (64, 64), (70, 45)])
def test_any_input_size(name, size):
    model = small_model(name).eval()
    with torch.no_grad():
        final, feats = model.forward_intermediates(torch.randn(2, 3, *size))
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    assert final.shape[:2] == (2, 128)
    for a, b in zip(feats, feats[1:]):  # each stage halves (ceil) the previous
        assert b.shape[2:] == ((a.shape[2] + 1) // 2, (a.shape[3] + 1) // 2)


def test_timm_style_api():
    model = small_model("vanilla_vmamba_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.num_classes == 7 and model.num_features == 128 and model.in_chans == 3
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.get_classifier() is model.classifier.head

    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith(("A_logs", "Ds")) for n in nwd)
    assert {n for n, _ in model.named_parameters() if n.endswith("A_logs")} <= nwd

    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 128, 2, 2)

    inter = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape[1] for t in inter] == [64, 128]
    inter = model.forward_intermediates(x, indices=[0, -1], output_fmt="NHWC", intermediates_only=True)
    assert inter[0].shape == (2, 16, 16, 16) and inter[1].shape == (2, 2, 2, 128)
    final, inter = model.forward_intermediates(x, norm=True)
    torch.testing.assert_close(inter[-1], final)


def test_prune_intermediate_layers():
    model = small_model().eval()
    x = torch.randn(1, 3, 64, 64)
    expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.layers) == 2
    got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_grad_checkpointing_gives_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = small_model()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_drop_path_only_in_training():
    model = small_model(drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


def test_features_only_backbone():
    model = vmamba.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(0, 1, 2, 3), **SMALL)
    assert isinstance(model, VSSMFeatures) and not hasattr(model, "classifier")
    assert all(hasattr(model, f"outnorm{i}") for i in range(4))
    outs = model(torch.randn(1, 3, 65, 97))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 17, 25), (1, 32, 9, 13), (1, 64, 5, 7), (1, 128, 3, 4)]
    assert model.feature_info.channels() == [16, 32, 64, 128]
    two = vmamba.create_model("vanilla_vmamba_tiny", features_only=True, out_indices=(1, -1), **SMALL)
    assert [o.shape[1] for o in two(torch.randn(1, 3, 64, 64))] == [32, 128]
    with pytest.raises(ValueError, match="out_indices"):
        vmamba.create_model("vanilla_vmamba_tiny", features_only=True, out_indices=(4,), **SMALL)
    with pytest.raises(ValueError, match="only meaningful with features_only"):
        vmamba.create_model("vanilla_vmamba_tiny", out_indices=(1,))


def test_in_chans_and_scan_modes():
    model = small_model(in_chans=1, scan_mode="bidi")
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, H, W\), got \(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects input of shape"):
        model(torch.randn(1, 32, 32))


def test_set_scan_backend_reaches_every_block():
    model = small_model()
    model.set_scan_backend("reference")
    backends = {m.scan_backend for m in model.modules() if isinstance(m, vmamba.models.SS2D)}
    assert backends == {"reference"} and model.config["scan_backend"] == "reference"


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vmamba_huge'"):
        vmamba.create_model("vmamba_huge")
    with pytest.raises(ValueError, match="builds architectures only"):  # weights: vmamba.create_model
        vmamba.models.create_model("vmamba_tiny_s1l8", pretrained=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        vmamba.create_model("vmamba_tiny_s1l8", bogus=1)


def test_initialisation_follows_the_authors():
    op = small_model("vanilla_vmamba_tiny").layers[0].blocks[0].op
    torch.testing.assert_close(op.A_logs.exp()[0], torch.arange(1.0, op.d_state + 1))
    assert torch.all(op.Ds == 1)
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert op.dt_projs_weight.abs().max() <= op.dt_rank ** -0.5
    assert isinstance(small_model(), VSSM)


def test_official_config_errors_name_the_problem():
    g = load_golden("golden_v2_tiny_small.pt")
    bad = dict(g["config"], forward_type="v3", norm_layer="bn", magic=1)
    with pytest.raises(ValueError) as e:
        vmamba.from_official_config(bad)
    for part in ("forward_type='v3'", "norm_layer='bn'", "magic=1 (unknown keyword)"):
        assert part in str(e.value)


@pytest.mark.parametrize("name", ["vanilla_vmamba_tiny", "vmamba_tiny_s1l8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_and_backward_stay_finite(name, dtype):
    """The scan keeps its state and exp(dt*A) in fp32 under autocast (no fp16 NaN)."""
    model = small_model(name, scan_backend="torch")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model.eval()(x)
    with torch.autocast("cpu", dtype=dtype), torch.no_grad():
        low = model(x)
    assert low.dtype == dtype and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=2e-2)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_features_model_is_a_composition_and_prunes_cleanly():
    model = vmamba.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(0, 1, 2), **SMALL).eval()
    assert not hasattr(model, "reset_classifier") and not hasattr(model, "forward_head")
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.layers) == 2 and not hasattr(model, "outnorm2") and model.out_indices == (0, 1)
    assert model.feature_info.channels() == [16, 32] and model.config["out_indices"] == [0, 1]
    after = model(x)
    for a, b in zip(after, before[:2]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"stage indices \[3\] out of range for 2 stages"):
        model.prune_intermediate_layers([3])
    with pytest.raises(TypeError, match="out_indices must be a sequence"):
        vmamba.create_model("vmamba_tiny_s1l8", features_only=True, out_indices="0,1", **SMALL)


def test_features_from_a_built_classifier_share_its_weights():
    classifier = small_model("vanilla_vmamba_tiny").eval()
    features = VSSMFeatures((3,), model=classifier)
    assert features.layers is classifier.layers and features.patch_embed is classifier.patch_embed
    x = torch.randn(1, 3, 64, 64)
    raw = classifier.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    torch.testing.assert_close(features(x)[0], features.outnorm3(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
