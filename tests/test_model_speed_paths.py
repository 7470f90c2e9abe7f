"""The model's fast paths stay exact and usable: channel-last layouts, low-precision models,
empty batches, constructor checks, and DDP gradient layouts."""
from __future__ import annotations

import os
import socket
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vmamba
from vmamba.models import SS2D
from vmamba.ops import cross_selective_scan

SMALL = dict(depths=(1, 1, 1, 1), dims=16, num_classes=5)
FAMILIES = ["vmamba_tiny_s1l8", "vanilla_vmamba_tiny"]


def small_model(name, **kw):
    torch.manual_seed(0)
    return vmamba.create_model(name, **{**SMALL, **kw})


def channel_first_ss2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written the plain way: one in_proj, an NCHW conv, projections on NCHW maps."""
    x = m.in_proj(x)
    if m.z_gate:
        x, z = x.chunk(2, dim=-1)
    x = m.act(F.conv2d(x.permute(0, 3, 1, 2).contiguous(), m.conv2d.weight.contiguous(), m.conv2d.bias,
                       padding=m.conv2d.padding, groups=m.conv2d.groups))
    b, d, h, w = x.shape
    k, r, n = 4, m.dt_rank, m.d_state
    x_dbl = torch.einsum("kcd,bdl->bkcl", m.x_proj_weight, x.reshape(b, d, h * w))
    dts, B, C = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("kdr,bkrl->bkdl", m.dt_projs_weight, dts).reshape(b, k, d, h, w)
    y = cross_selective_scan(x, dts, -torch.exp(m.A_logs.float()), B.reshape(b, k, n, h, w),
                             C.reshape(b, k, n, h, w), D=m.Ds.float(), delta_bias=m.dt_projs_bias.float().reshape(-1),
                             delta_softplus=True, mode=m.scan_mode, out_float=True, backend="torch")
    y = m.out_norm(y.permute(0, 2, 3, 1))
    if m.z_gate:
        y = y * F.silu(z)
    return m.out_proj(y)


@pytest.mark.parametrize("z_gate, d_state", [(True, 4), (False, 1)])
def test_channel_last_ss2d_equals_channel_first_forward_and_gradients(z_gate, d_state):
    torch.manual_seed(0)
    m = SS2D(12, d_state=d_state, z_gate=z_gate, conv_bias=z_gate, scan_backend="torch").double()
    x = torch.randn(2, 5, 7, 12, dtype=torch.float64, requires_grad=True)
    ours = m(x)
    ours.square().sum().backward()
    grads = [x.grad] + [p.grad for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    plain = channel_first_ss2d(m, x)
    plain.square().sum().backward()
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, [x.grad] + [p.grad for p in m.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_come_back_in_the_weights_layout(name):
    """Every conv weight is stored channel-last and every gradient has its weight's strides,
    also when the last stage's map is 1x1 (where a depthwise weight's layout used to flip) and
    for a dt_rank of 1 (where the step-size weight's did)."""
    model = small_model(name, drop_path_rate=0.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert model.layers[0].blocks[0].op.dt_rank == 1
    for size in (32, 40):
        model(torch.randn(2, 3, size, size)).sum().backward()
        for name_, p in model.named_parameters():
            assert p.grad.stride() == p.stride(), (size, name_)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_and_bfloat16_models_run_on_cpu(name, dtype):
    """model.half() / .bfloat16(): the scan runs in fp32 inside, every output has the model's dtype."""
    model = small_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        low = model.to(dtype)(x.to(dtype))
        feats = model.forward_intermediates(x.to(dtype), intermediates_only=True)
    assert low.dtype == dtype and all(f.dtype == dtype for f in feats)
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=3e-2)
    model.train()
    model(x.to(dtype)).float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_size_zero_gives_empty_outputs(name):
    model = small_model(name)
    x = torch.randn(0, 3, 32, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (0, 5)
        final, feats = model.forward_intermediates(x)
    assert final.shape == (0, 128, 1, 2)
    assert [tuple(f.shape) for f in feats] == [(0, 16, 8, 16), (0, 32, 4, 8), (0, 64, 2, 4), (0, 128, 1, 2)]
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (0, 5)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("arg, value, allowed", [
    ("depths", [], "non-empty sequence of positive ints"),
    ("depths", (2, 0, 2, 2), "non-empty sequence of positive ints"),
    ("dims", 0, "positive int"),
    ("dims", (96, 192), "4 positive ints"),
    ("ssm_ratio", 0, "positive number"),
    ("d_state", 0, "positive int"),
    ("dt_rank", 0, "'auto' or a positive int"),
    ("d_conv", 4, "odd kernel size"),
    ("scan_mode", "diagonal", "'cross2d', 'unidi', 'bidi'"),
    ("scan_backend", "fastest", "registered"),
    ("patch_size", 0, "positive int"),
    ("patch_size", 3, "even"),
    ("drop_path_rate", 1.0, "[0, 1)"),
    ("drop_path_rate", -0.1, "[0, 1)"),
    ("drop_rate", 1.5, "[0, 1)"),
    ("mlp_ratio", -1.0, ">= 0"),
    ("num_classes", -1, ">= 0"),
    ("in_chans", 0, "positive int"),
])
def test_constructor_rejects_bad_arguments(arg, value, allowed):
    with pytest.raises(ValueError) as e:
        vmamba.create_model("vmamba_tiny_s1l8", **{arg: value})
    message = str(e.value)
    assert f"{arg}={value!r}" in message and allowed in message


def test_ss2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"d_model=0 is not allowed"):
        SS2D(0)
    with pytest.raises(ValueError, match=r"scan_mode='zigzag' is not allowed.*'cross2d'"):
        SS2D(16, scan_mode="zigzag")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, src: str, queue) -> None:
    sys.path.insert(0, src)
    import torch.distributed as dist

    import vmamba as vm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = vm.create_model("vmamba_tiny_s1l8", **SMALL)
        ddp = nn.parallel.DistributedDataParallel(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for size in (32, 64):  # 32: the last stage runs on a 1x1 map
                ddp(torch.randn(2, 3, size, size)).sum().backward()
        queue.put((rank, [str(w.message) for w in caught]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_steps_raise_no_grad_stride_warning():
    import torch.multiprocessing as mp

    src = os.path.dirname(os.path.dirname(vmamba.__file__))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, src, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert sorted(results) == [0, 1] and all(p.exitcode == 0 for p in procs)
    for rank, messages in results.items():
        assert not [m for m in messages if "strides" in m], (rank, messages)


def test_drop_path_add_to_is_the_residual_add_in_one_pass():
    from vmamba.models.layers import DropPath

    dp = DropPath(0.5).train()
    residual = torch.randn(64, 3, 4, 5)
    x = torch.randn(64, 3, 4, 5, requires_grad=True)
    torch.manual_seed(1)
    fused = dp.add_to(residual, x)
    torch.manual_seed(1)
    plain = residual + dp(x)  # the same mask from the same generator state
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)  # addcmul may round once (FMA)
    kept = (fused - residual).flatten(1).ne(0).any(1)
    assert 0 < int(kept.sum()) < 64  # some samples dropped, some kept
    torch.testing.assert_close((fused - residual)[kept], x.detach()[kept] * 2.0)  # kept ones scaled by 1 / keep
    g = torch.randn_like(fused)
    (gx,) = torch.autograd.grad(fused, x, g)
    torch.testing.assert_close(gx, g * kept.view(-1, 1, 1, 1) * 2.0)
    assert torch.equal(dp.eval().add_to(residual, x), residual + x)
    seen = []
    dp.train().register_forward_hook(lambda m, i, o: seen.append(o))
    dp.add_to(residual, x)
    assert len(seen) == 1  # a hooked DropPath still runs as a module
