"""Compile the Triton scan kernels for an NVIDIA GPU without one, and report what they cost.

For each d_state class of ``vmamba.ops.scan_triton.CONFIGS`` (or the ones asked for), the plain and
the fused cross op, forward and backward, this compiles the kernel for the target architecture
(default sm_90, H100) exactly as a launch would (time-stride 1 specialised, 16-byte aligned
pointers), then reads the cubin with the ``cuobjdump`` that ships with Triton: registers per
thread, spilled bytes (local memory), and the static SASS instruction count per tile element
(the instructions of one thread times the threads, over the elements of one tile; loop bodies
counted once, so an estimate of the work per element, not a measurement). It needs no GPU, only
``pip install triton``; a kernel that fails to compile for the target fails here too.

Reading the numbers: an H100 SXM issues about 10 lane-instructions per byte of DRAM bandwidth
(132 SMs x 128 lanes x 1.98 GHz vs 3.35 TB/s), so a kernel moving b bytes per element is
bandwidth-bound only while it executes fewer than about 10*b instructions per element.

Usage: python benchmarks/triton_static.py [--arch 90] [--d-state 1,16] [--dtype float32,bfloat16]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

PTR_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# pointers in the input dtype; the rest (A, D, bias, states, partial sums, cross-op outputs) fp32
INPUT_PTRS = ("u_ptr", "delta_ptr", "z_ptr", "B_ptr", "C_ptr", "dy_ptr", "du_ptr", "ddelta_ptr", "dz_ptr")


def compile_kernel(fn, constexprs, ptr_dtypes, num_warps, arch, unit_time_stride):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs, consts = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if unit_time_stride and name.startswith("s_") and name.endswith("l") and name not in consts:
            consts[name] = 1  # Triton specialises integer arguments equal to 1
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + ptr_dtypes.get(name, "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name.startswith("s_"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def cubin_report(kernel):
    """(registers, spill bytes, SASS instruction count) of a compiled kernel."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    count = sum(1 for line in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]{4}\*/\s+\S", line))
    return int(m.group(1)), int(m.group(2)), count


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 A100, 90 H100)")
    p.add_argument("--d-state", default="", help="d_state values (default: every CONFIGS class)")
    p.add_argument("--dtype", default="float32", help="input dtypes, comma-separated")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    from vmamba.ops import scan_triton

    kernels = scan_triton._load_kernels(False)
    states = [int(s) for s in args.d_state.split(",") if s] or sorted(scan_triton.CONFIGS)
    print(f"sm_{args.arch}; tile = (chunk, d_state, channels); instr/elem = static SASS per thread x threads / tile")
    print("| d_state | op | pass | dtype | chunk | channels | warps | registers | spill B | instr/elem |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in states:
        cfg = scan_triton.CONFIGS[scan_triton._next_pow2(n)]
        for op, kdir, mode in (("plain", 1, 0), ("cross", 4, 1)):
            for dtype in args.dtype.split(","):
                ptrs = {k: PTR_DTYPES[dtype] for k in INPUT_PTRS}
                if kdir > 1:  # the cross op accumulates y and du in fp32
                    ptrs.update(du_ptr="fp32", dy_ptr="fp32")
                for which, fn, bd, warps in (("fwd", kernels.scan_fwd_kernel, cfg.fwd_d, cfg.fwd_warps),
                                              ("bwd", kernels.scan_bwd_kernel, cfg.bwd_d, cfg.bwd_warps)):
                    c = dict(N=n, BLOCK_N=scan_triton._next_pow2(n), KDIR=kdir, MODE=mode, HAS_D=True,
                             HAS_BIAS=True, HAS_Z=kdir == 1, SOFTPLUS=True, BLOCK_D=bd, T=cfg.chunk)
                    if which == "fwd":
                        c["SAVE"] = True
                    k = compile_kernel(fn, c, ptrs, warps, args.arch, unit_time_stride=kdir == 1)
                    regs, spill, count = cubin_report(k)
                    per_elem = count * 32 * warps / (cfg.chunk * c["BLOCK_N"] * bd)
                    print(f"| {n} | {op} | {which} | {dtype} | {cfg.chunk} | {bd} | {warps} | {regs} | {spill} | "
                          f"{per_elem:.0f} |", flush=True)


if __name__ == "__main__":
    main()
