"""The CPU kernel's build: instruction set chosen from the CPU or forced, the d_state limit, the build lock.

The forced-build checks compile the kernel once per instruction set this CPU runs (in a fresh
process each, since one process loads one build); AVX-512 is skipped where the CPU lacks it.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmamba.ops import scan_cpu

SRC = str(Path(scan_cpu.__file__).resolve().parents[2])  # the vmamba sources under test


def test_supported_isas_end_with_generic_and_auto_picks_the_best(monkeypatch):
    isas = scan_cpu.supported_isas()
    assert isas[-1] == "generic" and set(isas) <= set(scan_cpu.ISAS)
    monkeypatch.delenv("VMAMBA_CPU_ISA", raising=False)
    assert scan_cpu.selected_isa() == isas[0]
    monkeypatch.setenv("VMAMBA_CPU_ISA", "generic")
    assert scan_cpu.selected_isa() == "generic"


def test_bad_isa_override_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("VMAMBA_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match=r"VMAMBA_CPU_ISA='sse9'.*avx512, avx2, generic"):
        scan_cpu.selected_isa()
    missing = [isa for isa in scan_cpu.ISAS if isa not in scan_cpu.supported_isas()]
    if missing:
        monkeypatch.setenv("VMAMBA_CPU_ISA", missing[0])
        with pytest.raises(ValueError, match="this CPU cannot run that build"):
            scan_cpu.selected_isa()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 flag sets")
def test_x86_flags_enable_exactly_the_chosen_isa():
    for isa in scan_cpu.ISAS:
        for cflags, _ in scan_cpu.build_attempts(isa):
            assert f"-DVMAMBA_MAXN={scan_cpu.MAX_STATE}" in cflags
            assert not any(f.startswith("-march") for f in cflags)  # never -march=native
            assert ("-mavx2" in cflags) == (isa in ("avx2", "avx512"))
            assert ("-mavx512f" in cflags) == (isa == "avx512")
    with pytest.raises(ValueError, match="unknown kernel build 'neon'"):
        scan_cpu.build_attempts("neon")


def test_cache_key_depends_on_the_isa():
    keys = {scan_cpu._build_key(isa) for isa in scan_cpu.ISAS}
    assert len(keys) == len(scan_cpu.ISAS)


def test_build_lock_removes_the_lock_file_of_a_killed_build(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    (build / "lock").write_text("")  # what cpp_extension leaves behind when its build is killed
    with scan_cpu.build_lock(build):
        assert not (build / "lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_build_lock_of_a_dead_process_is_taken_over(tmp_path):
    build = tmp_path / "build"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {SRC!r})
            from pathlib import Path
            from vmamba.ops.scan_cpu import build_lock
            with build_lock(Path({str(build)!r})):
                (Path({str(build)!r}) / "lock").write_text("")  # as cpp_extension does while building
                print("locked", flush=True)
                time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # a fresh process takes the lock (the OS released the dead holder's) and clears the leftover file
    taker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {SRC!r})
            from pathlib import Path
            from vmamba.ops.scan_cpu import build_lock
            with build_lock(Path({str(build)!r})):
                print((Path({str(build)!r}) / "lock").exists())
        """)], capture_output=True, text=True, timeout=60)
    assert taker.returncode == 0, taker.stderr
    assert taker.stdout.strip() == "False"


def test_the_build_carries_pythons_state_limit():
    if not scan_cpu.is_available():
        pytest.skip(f"CPU scan kernel cannot be built here: {scan_cpu.extension_info().get('error')}")
    info = scan_cpu.extension_info()
    assert info["max_state"] == scan_cpu.MAX_STATE == int(scan_cpu.load_extension().max_state())
    assert info["isa"] == scan_cpu.selected_isa()


# Run in a fresh process with VMAMBA_CPU_ISA set: the plain scan (with z), the fused cross-scan and
# a plain scan at the edges of softplus and the decay exp against the float64 reference, and the
# build's depthwise convolution and LayerNorm against float64 ATen, forward and gradients; prints
# the build's facts and the errors.
FORCED = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, sys.argv[1])
    from vmamba.ops import cross_selective_scan, scan_cpu, selective_scan

    def err(a, b):
        return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    b, d, L, n = 2, 20, 70, 16
    plain = [r(b, d, L), r(b, d, L) * 0.5, -torch.rand(d, n, generator=g) - 0.1, r(b, 2, n, L), r(b, 2, n, L),
             r(d), r(d) * 0.3, r(b, d, L)]
    h, wd = 9, 12
    cross = [r(b, d, h, wd), r(b, 4, d, h, wd) * 0.5, -torch.rand(4 * d, n, generator=g) - 0.1,
             r(b, 4, n, h, wd), r(b, 4, n, h, wd), r(4 * d), r(4 * d) * 0.3]
    w = r(b, d, L).double()
    wc = r(b, d, h, wd).double()

    def scan(backend):
        return lambda u, dl, A, B, C, D, bias, z: selective_scan(
            u, dl, A, B, C, D=D, delta_bias=bias, delta_softplus=True, z=z, backend=backend)

    def xscan(backend):
        return lambda x, dl, A, B, C, D, bias: cross_selective_scan(x, dl, A, B, C, D=D, delta_bias=bias,
                                                                     delta_softplus=True, backend=backend)

    # softplus and the decay exp at the edges: raw step sizes from -120 to 120 (softplus's
    # exp(-|x|) under- and overflowing), channels whose |dt * A| stays under 126 in some chunks
    # and exceeds it in others (the AVX2 build's fast and clamped decay paths), and NaN steps.
    L2 = 256
    edge_delta = torch.linspace(-120, 120, L2).repeat(1, d, 1) * (torch.rand(1, d, 1, generator=g) + 0.5)
    edge_delta[..., ::7] = r(1, d, L2)[..., ::7]
    edge_A = -torch.rand(d, n, generator=g) - 0.1
    edge_A[::3] *= 60.0
    edge = [r(1, d, L2), edge_delta, edge_A, r(1, 2, n, L2), r(1, 2, n, L2), r(d), r(d) * 0.3, r(1, d, L2)]
    we = r(1, d, L2).double()

    errors = []
    for fn, ins, weight in ((scan, plain, w), (xscan, cross, wc), (scan, edge, we)):
        outs = []
        for backend, dtype in (("cpu", torch.float32), ("reference", torch.float64)):
            args = [t.to(dtype).requires_grad_() for t in ins]
            y = fn(backend)(*args)
            outs.append([y] + list(torch.autograd.grad((y.double() * weight).sum(), args)))
        errors.append(max(err(a, b_) for a, b_ in zip(*outs)))
    with_nan = [t.clone() for t in edge]
    with_nan[1][..., 5::31] = float("nan")
    y_nan = [scan(backend)(*[t.to(dtype) for t in with_nan])
             for backend, dtype in (("cpu", torch.float32), ("reference", torch.float64))]
    nan_match = torch.equal(y_nan[0].isnan(), y_nan[1].isnan())
    keep = ~y_nan[1].isnan()
    errors.append(err(y_nan[0][keep], y_nan[1][keep]))
    # the build's other kernels: the depthwise 3x3 convolution and LayerNorm (odd channel counts:
    # whole vectors and a tail), outputs and every gradient against float64 ATen
    import torch.nn.functional as F
    from vmamba.ops import norm as norm_mod
    from vmamba.ops.conv import _DepthwiseConv3x3
    ext = scan_cpu.load_extension()
    norm_mod.MIN_ELEMENTS = 0
    for c in (24, 37):
        x, k, bias = r(2, c, 7, 9).contiguous(memory_format=torch.channels_last), r(c, 1, 3, 3), r(c)
        gy = r(2, c, 7, 9)
        outs = []
        for dtype in (torch.float32, torch.float64):
            args = [t.to(dtype).requires_grad_() for t in (x, k, bias)]
            y = (_DepthwiseConv3x3.apply(*args, ext) if dtype == torch.float32
                 else F.conv2d(args[0], args[1], args[2], 1, 1, 1, c))
            outs.append([y] + list(torch.autograd.grad((y * gy.to(dtype)).sum(), args)))
        errors.append(max(err(a, b_) for a, b_ in zip(*outs)))
        xs, ws, bs, gs = r(5, 3, c) * 2 + 1, r(c), r(c), r(5, 3, c)
        outs = []
        for dtype in (torch.float32, torch.float64):
            args = [t.to(dtype).requires_grad_() for t in (xs, ws, bs)]
            y = norm_mod.layer_norm(args[0], (c,), args[1], args[2])
            outs.append([y] + list(torch.autograd.grad((y * gs.to(dtype)).sum(), args)))
        errors.append(max(err(a, b_) for a, b_ in zip(*outs)))
    info = scan_cpu.extension_info()
    print(json.dumps(dict(isa=info["isa"], lanes=info["lanes"], errors=errors, nan_match=nan_match)))
""")


@pytest.mark.slow
@pytest.mark.parametrize("isa", scan_cpu.ISAS)
def test_forced_isa_builds_match_the_reference(isa):
    if isa not in scan_cpu.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    env = dict(os.environ, VMAMBA_CPU_ISA=isa)
    run = subprocess.run([sys.executable, "-c", FORCED, SRC], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["isa"] == isa
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert facts["lanes"] == {"avx512": 16, "avx2": 8, "generic": 4}[isa]
    assert max(facts["errors"]) <= 2e-5, facts
    assert facts["nan_match"], facts


@pytest.mark.skipif(not scan_cpu.is_available(), reason="no C++ toolchain for the CPU kernel")
def test_another_checkout_of_the_same_source_reuses_the_cached_build(tmp_path):
    import shutil

    build = Path(scan_cpu.extension_info()["build_dir"])
    library = next(build.glob("*.so"))
    built_at = library.stat().st_mtime_ns
    shutil.copytree(Path(scan_cpu.__file__).parents[1], tmp_path / "vmamba")
    code = ("import vmamba.ops.scan_cpu as s; assert s.load_extension() is not None; "
            "print(s.__file__); print(s.extension_info()['build_dir'])")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    where, used = out.stdout.split()[-2:]
    assert where.startswith(str(tmp_path)) and used == str(build)
    assert library.stat().st_mtime_ns == built_at  # loaded, not rebuilt
