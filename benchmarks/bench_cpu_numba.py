"""The design check behind the "cpu" backend: C++ kernel vs a numba kernel vs the torch path.

A straightforward numba version of the selective-scan forward (state in a small array, parallel
over (batch, channel) with prange, fastmath so the inner loop over N may vectorise) timed at the
stage-1 shape of vanilla_vmamba_tiny beside the compiled C++ kernel and the "torch" backend, in
the same process. numba is not a dependency of vmamba: run this in an environment that has it.

Usage: PYTHONPATH=src python benchmarks/bench_cpu_numba.py [threads]
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover
    sys.exit("numba is not installed; this comparison needs it")

from vmamba.ops import selective_scan


@njit(parallel=True, fastmath=True)
def scan_numba(u, dt, A, Bt, Ct, Dv, y):
    """u, dt: (b, D, L) with dt already softplus'ed; A (D, N); Bt, Ct (b, G, L, N); y out."""
    b, D, L = u.shape
    N = A.shape[1]
    G = Bt.shape[1]
    dg = D // G
    for idx in prange(b * D):
        bi = idx // D
        c = idx % D
        g = c // dg
        h = np.zeros(N, np.float32)
        for t in range(L):
            d = dt[bi, c, t]
            x = d * u[bi, c, t]
            acc = np.float32(0.0)
            for n in range(N):
                h[n] = np.exp(d * A[c, n]) * h[n] + x * Bt[bi, g, t, n]
                acc += h[n] * Ct[bi, g, t, n]
            y[bi, c, t] = acc + Dv[c] * u[bi, c, t]


def best(fn, reps=5):
    """Minimum over reps; process CPU time with one thread (robust on a shared machine), else wall."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    fn()
    out = float("inf")
    for _ in range(reps):
        t = clock()
        fn()
        out = min(out, clock() - t)
    return out


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    b, D, L, N = 1, 768, 3136, 16
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, D, L, generator=g)
    delta = torch.randn(b, D, L, generator=g) * 0.5 - 1
    A = -torch.rand(D, N, generator=g) - 0.5
    B = torch.randn(b, 4, N, L, generator=g)
    C = torch.randn(b, 4, N, L, generator=g)
    Dv = torch.ones(D)
    dt = torch.nn.functional.softplus(delta)
    Bt, Ct = B.transpose(-1, -2).contiguous().numpy(), C.transpose(-1, -2).contiguous().numpy()
    y = np.empty((b, D, L), np.float32)
    args = (u.numpy(), dt.numpy(), A.numpy(), Bt, Ct, Dv.numpy(), y)
    t_nb = best(lambda: scan_numba(*args))
    with torch.no_grad():
        ref = selective_scan(u, dt, A, B, C, D=Dv, backend="cpu")
        t_cpp = best(lambda: selective_scan(u, delta, A, B, C, D=Dv, delta_softplus=True, backend="cpu"))
        t_torch = best(lambda: selective_scan(u, delta, A, B, C, D=Dv, delta_softplus=True, backend="torch"), 3)
    err = float(np.abs(y - ref.numpy()).max() / np.abs(ref.numpy()).max())
    flops = 9 * b * D * L * N
    print(f"stage-1 shape (B={b}, D={D}, L={L}, N={N}), {threads} thread(s), numba {numba.__version__}")
    print("| implementation | forward ms | GFLOP/s | x torch |")
    print("|---|---|---|---|")
    for name, t in (("C++ kernel ('cpu')", t_cpp), ("numba (prange, fastmath)", t_nb), ("'torch' backend", t_torch)):
        print(f"| {name} | {t * 1e3:.2f} | {flops / t / 1e9:.1f} | {t_torch / t:.1f} |")
    print(f"numba vs C++ max relative difference: {err:.1e}")


if __name__ == "__main__":
    main()
