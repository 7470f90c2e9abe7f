"""GPU benchmark of the Triton selective-scan kernels ("triton" backend) and of whole models.

Prints, in one run on one GPU (and writes ``<out>.json``, ``<out>_scan.csv``, ``<out>_models.csv``):

1. the device, its peak memory bandwidth (from NVML when ``pynvml`` is installed, else a table of
   known cards, else ``--peak-gbs``) and the bandwidth a plain device-to-device copy achieves;
2. the scan at the four stage shapes (224 px, batch 128) of vanilla_vmamba_tiny (d_state 16) and
   vmamba_tiny_s1l8 (d_state 1), in fp32 and bf16 (A, D, delta_bias fp32, fp32 output, as SS2D
   calls it), for the fused four-direction op models use (``cross_selective_scan``: map in, map
   out) and the plain ``selective_scan`` over the (batch, 4*d_inner, H*W) sequences: forward and
   forward+backward time of the "triton" backend and of the "torch" backend on the same GPU in the
   same process, the speed-up, and the achieved bandwidth as a fraction of the device's peak.
   Bandwidth counts the compulsory traffic: every input read once, every output written once
   (forward+backward: the saved chunk states too, and the gradients), so 100% is unreachable;
3. whole-model throughput at 224 px, batch 128: inference in fp32 and with AMP, and a training
   step (forward + backward with AMP, no optimizer step, as the authors measure), img/s and peak
   memory, of the zoo models beside timm's swin_tiny and convnext_tiny (when timm imports), with
   the ratios the issue targets (vmamba_tiny_s1l8 vs swin_tiny: inference >= 1.35x, training
   >= 0.58x, aiming above 0.8x).

Timings: CUDA events around each call, median over repetitions after warm-up (Triton compiles on
the first call). ``--tune`` also times alternative tile shapes of the kernels at each scan shape and
prints the best (to paste into ``vmamba.ops.scan_triton.CONFIGS``).

Usage:
    python benchmarks/bench_gpu.py                    # everything (about 10-20 minutes on an H100)
    python benchmarks/bench_gpu.py --no-models        # scan kernels only
    python benchmarks/bench_gpu.py --no-torch         # skip the (slow) "torch" backend baseline
    python benchmarks/bench_gpu.py --tune --no-models # tile-shape search
    python benchmarks/bench_gpu.py --interpret        # CPU smoke run of this script (a minute or two):
                                                      # Triton's interpreter, tiny shapes, stage 1 only,
                                                      # one model on the "torch" backend; timings meaningless
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

STAGE_HW = (56, 28, 14, 7)
SCAN_MODELS = {  # name: (d_inner of each stage, d_state)
    "vanilla_vmamba_tiny": ((192, 384, 768, 1536), 16),
    "vmamba_tiny_s1l8": ((96, 192, 384, 768), 1),
}
ZOO_MODELS = ("vmamba_tiny_s1l8", "vanilla_vmamba_tiny")
TIMM_MODELS = {"swin_tiny": "swin_tiny_patch4_window7_224", "convnext_tiny": "convnext_tiny"}

# Peak DRAM bandwidth (GB/s) of known cards, matched on torch.cuda.get_device_name (first match).
PEAK_GBS = [
    ("H200", 4800), ("GH200", 4000), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
    ("B200", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("V100", 900),
    ("RTX 4090", 1008), ("RTX 3090", 936), ("RTX A6000", 768), ("T4", 320),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img", type=int, default=224, help="image size of the model runs")
    p.add_argument("--no-scan", action="store_true", help="skip the scan kernels")
    p.add_argument("--no-models", action="store_true", help="skip the whole-model throughput")
    p.add_argument("--no-torch", action="store_true", help="skip the 'torch' backend baseline")
    p.add_argument("--models", default=",".join(ZOO_MODELS), help="zoo models, comma-separated")
    p.add_argument("--peers", default=",".join(TIMM_MODELS), help="timm peers, comma-separated ('' for none)")
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--compile", action="store_true", help="also time the models under torch.compile")
    p.add_argument("--tune", action="store_true", help="time alternative tile shapes of the kernels")
    p.add_argument("--peak-gbs", type=float, help="the device's peak memory bandwidth in GB/s")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions of each scan call")
    p.add_argument("--out", default="bench_gpu", help="prefix of the JSON and CSV result files")
    p.add_argument("--interpret", action="store_true",
                   help="run on CPU under Triton's interpreter at tiny shapes (tests this script)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- device facts

def peak_bandwidth_gbs(torch, override=None):
    """(GB/s, source) of the device's peak DRAM bandwidth: --peak-gbs, NVML, or the table."""
    if override:
        return override, "--peak-gbs"
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        if mhz and bits:
            return 2 * mhz * 1e6 * bits / 8 / 1e9, "NVML (2 x memory clock x bus width)"
    except Exception:  # noqa: BLE001 - pynvml is optional
        pass
    name = torch.cuda.get_device_name()
    for key, gbs in PEAK_GBS:
        if key in name:
            return float(gbs), f"table entry {key!r}"
    return None, "unknown (pass --peak-gbs)"


def copy_bandwidth_gbs(torch, device):
    """GB/s of a device-to-device copy of 1 GiB (read + write): the practical ceiling."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_call(torch, lambda: dst.copy_(src), device, reps=10)
    return 2 * (1 << 30) / t / 1e9


def time_call(torch, fn, device, reps=10, warmup=2, max_seconds=20.0):
    """Median seconds per call of fn() (CUDA events; wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    start_all = time.perf_counter()
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if time.perf_counter() - start_all > max_seconds and len(times) >= 2:
            break
    return statistics.median(times)


# ----------------------------------------------------------------------------- scan kernels

def scan_inputs(torch, batch, d, hw, n, dtype, device, seed=0):
    """SS2D's scan inputs at one stage: pixel layout for the fused op (A, D, bias fp32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = w = hw

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return dict(
        x=r(batch, d, h, w), delta=r(batch, 4, d, h, w, scale=0.5),
        A=-torch.rand(4 * d, n, generator=g).add_(0.1).to(device), B=r(batch, 4, n, h, w), C=r(batch, 4, n, h, w),
        D=torch.randn(4 * d, generator=g).to(device), delta_bias=(torch.randn(4 * d, generator=g) * 0.3).to(device),
    )


def plain_inputs(torch, ins):
    """The same numbers as four plain sequences: u, delta (batch, 4d, L); B, C (batch, 4, N, L)."""
    from vmamba.ops import cross_scan, scan_order

    b, d, h, w = ins["x"].shape
    return dict(u=cross_scan(ins["x"]).reshape(b, 4 * d, h * w).contiguous(),
                delta=scan_order(ins["delta"]).reshape(b, 4 * d, h * w).contiguous(),
                A=ins["A"], B=scan_order(ins["B"]).contiguous(), C=scan_order(ins["C"]).contiguous(),
                D=ins["D"], delta_bias=ins["delta_bias"])


def scan_bytes(torch, ins, op, train, chunk):
    """Compulsory DRAM traffic of one call: inputs read once, outputs (and, when training, the
    saved states and the gradients) written once."""
    def size(t):
        return t.numel() * t.element_size()

    if op == "cross":
        b, d, h, w = ins["x"].shape
        main = size(ins["x"]) + size(ins["delta"])
        y = b * d * h * w * 4
    else:
        b, kd, L = ins["u"].shape
        h, w = 1, L
        d = kd // 4
        main = size(ins["u"]) + size(ins["delta"])
        y = b * kd * L * 4
    n = ins["A"].shape[1]
    bc = size(ins["B"]) + size(ins["C"])
    fwd = main + bc + y
    if not train:
        return fwd
    states = b * 4 * d * (-(-(h * w) // chunk)) * n * 4
    # backward: reads inputs, dy, states; writes d(inputs)
    return fwd + states + (main + bc + y + states) + (main + bc)


def run_scan(torch, op, ins, backend, grad):
    """One call of the op on ``ins`` (forward; with ``grad`` also the backward of sum(y))."""
    from vmamba.ops import cross_selective_scan, selective_scan

    kw = dict(D=ins["D"], delta_bias=ins["delta_bias"], delta_softplus=True, out_float=True, backend=backend)
    first = ins["x"] if op == "cross" else ins["u"]
    scan = cross_selective_scan if op == "cross" else selective_scan
    with torch.set_grad_enabled(grad):
        y = scan(first, ins["delta"], ins["A"], ins["B"], ins["C"], **kw)
    if grad:
        y.backward(torch.ones_like(y))


def measure_scan(torch, args, device, op, ins):
    """(fwd s, fwd+bwd s) of the "triton" backend, and of the "torch" one (nan with --no-torch)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in ins.items()}

    def fwd(backend):
        run_scan(torch, op, ins, backend, grad=False)

    def fwd_bwd(backend):
        for v in leaves.values():
            v.grad = None
        run_scan(torch, op, leaves, backend, grad=True)

    t_fwd = time_call(torch, lambda: fwd("triton"), device, reps=args.reps, warmup=args.warmup)
    t_fb = time_call(torch, lambda: fwd_bwd("triton"), device, reps=args.reps, warmup=args.warmup)
    t_fwd_torch = t_fb_torch = float("nan")
    if not args.no_torch:  # pure PyTorch: nothing to compile, so little warm-up; it is slow
        t_fwd_torch = time_call(torch, lambda: fwd("torch"), device, reps=min(3, args.reps),
                                warmup=min(1, args.warmup))
        t_fb_torch = time_call(torch, lambda: fwd_bwd("torch"), device, reps=min(2, args.reps), warmup=0)
    return t_fwd, t_fb, t_fwd_torch, t_fb_torch


def bench_scan(torch, args, device, peak):
    from vmamba.ops import scan_triton

    rows = []
    dtypes = (torch.float32,) if args.interpret else (torch.float32, torch.bfloat16)
    backend = "triton" if device == "cuda" else "triton-interpret"
    print("\n## Scan kernels (batch %d, 224 px stage shapes)\n" % args.batch)
    print("time in ms; 'x torch' = torch backend time / triton time; 'BW' = compulsory traffic / time "
          "as a fraction of the device's peak\n")
    print("| model | stage | op | dtype | D | L | N | fwd ms | x torch | fwd BW | fwd+bwd ms | x torch | fwd+bwd BW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (dims, n) in SCAN_MODELS.items():
        chunk = scan_triton.config_for(n, device).chunk
        for stage, (d, hw) in enumerate(zip(dims, STAGE_HW), 1):
            if args.interpret:  # tiny, stage 1 only: the interpreter runs a few thousand elements a second
                if stage > 1:
                    break
                d, hw = 2, 4
            for dtype, op in ((dt, op) for dt in dtypes for op in ("cross", "plain")):
                ins = scan_inputs(torch, args.batch, d, hw, n, dtype, device)
                if op == "plain":
                    ins = plain_inputs(torch, ins)
                t_fwd, t_fb, t_fwd_torch, t_fb_torch = measure_scan(torch, args, device, op, ins)
                bw_fwd = scan_bytes(torch, ins, op, False, chunk) / t_fwd / 1e9
                bw_fb = scan_bytes(torch, ins, op, True, chunk) / t_fb / 1e9
                del ins
                if device == "cuda":
                    torch.cuda.empty_cache()
                row = dict(model=name, stage=stage, op=op, dtype=str(dtype).replace("torch.", ""), D=4 * d,
                           L=hw * hw, N=n, batch=args.batch, backend=backend,
                           fwd_ms=t_fwd * 1e3, fwd_torch_ms=t_fwd_torch * 1e3, fwd_speedup=t_fwd_torch / t_fwd,
                           fwd_gbs=bw_fwd, fwd_peak_frac=bw_fwd / peak if peak else None,
                           fwdbwd_ms=t_fb * 1e3, fwdbwd_torch_ms=t_fb_torch * 1e3,
                           fwdbwd_speedup=t_fb_torch / t_fb, fwdbwd_gbs=bw_fb,
                           fwdbwd_peak_frac=bw_fb / peak if peak else None)
                rows.append(row)

                def bw(gbs):
                    return f"{gbs / peak:.0%}" if peak else f"{gbs:.0f} GB/s"

                print(f"| {name} | {stage} | {op} | {row['dtype']} | {4 * d} | {hw * hw} | {n} | "
                      f"{t_fwd * 1e3:.3f} | {row['fwd_speedup']:.1f} | {bw(bw_fwd)} | "
                      f"{t_fb * 1e3:.3f} | {row['fwdbwd_speedup']:.1f} | {bw(bw_fb)} |", flush=True)
    return rows


def tune_stage(torch, args, device, d, hw, n, key, candidates):
    """Seconds of forward+backward of the fused op (bf16) at one stage shape, per tile shape."""
    from vmamba.ops import scan_triton

    leaves = {k: v.requires_grad_() for k, v in scan_inputs(torch, args.batch, d, hw, n, torch.bfloat16,
                                                            device).items()}

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        run_scan(torch, "cross", leaves, "triton", grad=True)

    times = {}
    for c in candidates:
        scan_triton.CONFIGS[key] = c
        try:
            times[c] = time_call(torch, fwd_bwd, device, reps=3, warmup=1)
        except Exception as e:  # noqa: BLE001 - e.g. out of registers or shared memory
            times[c] = float("inf")
            print(f"  {c}: failed ({type(e).__name__}: {str(e)[:100]})")
    return times


def tune_scan(torch, args, device):
    """Time alternative tile shapes at each scan shape (fused op, bf16); print the best."""
    from vmamba.ops import scan_triton

    Config = scan_triton.Config
    saved = dict(scan_triton.CONFIGS)
    best_by_n = {}
    print("\n## Tile-shape search (fused op, bf16, forward+backward)\n")
    try:
        for name, (dims, n) in SCAN_MODELS.items():
            key = scan_triton._next_pow2(n)
            candidates = []
            for chunk in (8, 16, 32):
                for fwd_d, fwd_w in ((32, 2), (32, 4), (64, 2), (64, 4), (128, 4)):
                    for bwd_d, bwd_w in ((32, 4), (32, 8), (64, 4), (128, 4)):
                        candidates.append(Config(chunk, fwd_d, fwd_w, bwd_d, bwd_w))
            totals = {c: 0.0 for c in candidates}
            for d, hw in zip(dims, STAGE_HW):
                for c, t in tune_stage(torch, args, device, d, hw, n, key, candidates).items():
                    totals[c] += t
            ranked = sorted(totals.items(), key=lambda kv: kv[1])
            print(f"{name} (d_state {n}): sum over the 4 stages of fwd+bwd ms, best 5:")
            for c, t in ranked[:5]:
                print(f"  {t * 1e3:9.3f} ms  {c}")
            print(f"  current default {saved[key]}: {totals.get(saved[key], float('nan')) * 1e3:.3f} ms")
            best_by_n[key] = ranked[0][0]
    finally:
        scan_triton.CONFIGS.clear()
        scan_triton.CONFIGS.update(saved)
    return {str(k): list(v) for k, v in best_by_n.items()}


# ----------------------------------------------------------------------------- whole models

def build_model(name, device, backend):
    if name in TIMM_MODELS:
        import timm
        return timm.create_model(TIMM_MODELS[name], pretrained=False).to(device)
    import vmamba
    return vmamba.create_model(name, scan_backend=backend).to(device)


def bench_model(torch, name, mode, args, device, backend, compiled=False):
    """img/s and peak memory (MiB) of one model in one mode: infer_fp32, infer_amp, train_amp."""
    torch.manual_seed(0)
    model = build_model(name, device, backend)
    if compiled:
        model = torch.compile(model)
    batch = args.batch
    x = torch.randn(batch, 3, args.img, args.img, device=device)
    target = torch.randint(0, 1000, (batch,), device=device)
    amp_dtype = getattr(torch, args.amp_dtype) if device == "cuda" else torch.bfloat16
    loss_fn = torch.nn.CrossEntropyLoss()

    if mode.startswith("infer"):
        model.eval()

        def step():
            with torch.no_grad(), torch.autocast(device, dtype=amp_dtype, enabled=mode == "infer_amp"):
                model(x)
    else:
        model.train()

        def step():
            with torch.autocast(device, dtype=amp_dtype):
                loss = loss_fn(model(x).float(), target)
            loss.backward()
            for p in model.parameters():
                p.grad = None

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time_call(torch, step, device, reps=1 if args.interpret else 10, warmup=args.warmup + 1, max_seconds=30.0)
    mem = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else float("nan")
    return batch / t, mem  # the model and its activations go with this frame


def bench_models(torch, args, device):
    names = [m for m in args.models.split(",") if m]
    peers = [m for m in args.peers.split(",") if m]
    if peers:
        try:
            import timm  # noqa: F401
        except Exception as e:  # noqa: BLE001 - timm (and torchvision) are optional
            print(f"\n(timm does not import: {type(e).__name__}: {str(e)[:120]}; peers skipped)")
            peers = []
    backend = "triton" if device == "cuda" else "torch"  # the registry runs "triton" on CUDA only
    modes = ("infer_fp32", "infer_amp", "train_amp")
    rows = []
    print(f"\n## Whole models ({args.img} px, batch {args.batch}, AMP {args.amp_dtype}; vmamba scan backend "
          f"{backend!r}; train = forward + backward, no optimizer step)\n")
    print("| model | compiled | infer fp32 img/s | infer AMP img/s | train AMP img/s | train peak MiB |")
    print("|---|---|---|---|---|---|")
    variants = [(m, False) for m in names + peers]
    if args.compile:
        variants += [(m, True) for m in names + peers]
    for name, compiled in variants:
        row = dict(model=name, compiled=compiled, backend=backend if name not in TIMM_MODELS else "-",
                   batch=args.batch, img=args.img)
        for mode in modes:
            try:
                ips, mem = bench_model(torch, name, mode, args, device, backend, compiled)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: report and go on
                print(f"  {name} {mode}: {type(e).__name__}: {str(e)[:200]}")
                ips, mem = float("nan"), float("nan")
            if device == "cuda":
                torch.cuda.empty_cache()
            row[mode] = ips
            if mode == "train_amp":
                row["train_peak_mib"] = mem
        rows.append(row)
        print(f"| {name} | {'yes' if compiled else 'no'} | {row['infer_fp32']:.0f} | {row['infer_amp']:.0f} | "
              f"{row['train_amp']:.0f} | {row['train_peak_mib']:.0f} |", flush=True)

    def find(name, compiled=False):
        return next((r for r in rows if r["model"] == name and r["compiled"] == compiled), None)

    ratios = {}
    for compiled in ((False, True) if args.compile else (False,)):
        ours, swin = find("vmamba_tiny_s1l8", compiled), find("swin_tiny", compiled)
        if ours and swin:
            tag = "compiled" if compiled else "eager"
            ratios[tag] = {mode: ours[mode] / swin[mode] for mode in modes}
            r = ratios[tag]
            print(f"\nvmamba_tiny_s1l8 / swin_tiny ({tag}): inference fp32 {r['infer_fp32']:.2f}x "
                  f"(target >= 1.35x; authors on A100: 1686/1244 = 1.36x), inference AMP {r['infer_amp']:.2f}x, "
                  f"training AMP {r['train_amp']:.2f}x (target >= 0.58x, the authors' 571/987; aim > 0.8x)")
    return rows, ratios


# ----------------------------------------------------------------------------- main

def write_csv(path, rows):
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv=None):
    args = parse_args(argv)
    if not args.interpret:
        return run(args)
    with interpreter_mode():
        return run(args)


def run(args):
    import torch

    try:
        import triton
    except ImportError:
        sys.exit("bench_gpu: triton is not installed (pip install triton, or pip install 'vmamba[triton]')")
    if not args.interpret and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU is visible to torch (torch.cuda.is_available() is False). This "
                 "benchmark times GPU kernels; run it on a GPU machine, or with --interpret for a CPU smoke "
                 "run of the script itself (tiny shapes, meaningless timings).")
    device = "cpu" if args.interpret else "cuda"
    args.warmup = 2
    if args.interpret:
        args.batch, args.img, args.reps, args.warmup, args.amp_dtype = 1, 32, 1, 0, "bfloat16"
        args.models = args.models.split(",")[0]
        if args.tune:
            sys.exit("bench_gpu: --tune needs a GPU")

    from vmamba.ops import available_backends, scan_triton

    info = dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                device=device, interpret=args.interpret, argv=sys.argv[1:])
    peak = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        peak, source = peak_bandwidth_gbs(torch, args.peak_gbs)
        copy_gbs = copy_bandwidth_gbs(torch, device)
        info.update(gpu=torch.cuda.get_device_name(), sms=props.multi_processor_count,
                    memory_gib=props.total_memory / 2 ** 30, peak_gbs=peak, peak_source=source, copy_gbs=copy_gbs,
                    backends=available_backends("cuda"), triton_available=scan_triton.is_available())
        print(f"# {info['gpu']}: {props.multi_processor_count} SMs, {info['memory_gib']:.0f} GiB; peak bandwidth "
              f"{peak or float('nan'):.0f} GB/s ({source}); device copy {copy_gbs:.0f} GB/s"
              + (f" ({copy_gbs / peak:.0%} of peak)" if peak else ""))
        print(f"# torch {torch.__version__}, triton {triton.__version__}; backends on cuda: {info['backends']}")
        if not scan_triton.is_available():
            sys.exit(f"bench_gpu: the triton backend is unavailable: {scan_triton.triton_info()}")
    else:
        print(f"# --interpret: CPU, Triton {triton.__version__} interpreter, tiny shapes (timings meaningless)")

    result = dict(info=info, configs={str(k): list(v) for k, v in scan_triton.CONFIGS.items()})
    if not args.no_scan:
        result["scan"] = bench_scan(torch, args, device, peak)
        write_csv(args.out + "_scan.csv", result["scan"])
    if args.tune:
        result["tuned_configs"] = tune_scan(torch, args, device)
    if not args.no_models:
        result["models"], result["ratios"] = bench_models(torch, args, device)
        write_csv(args.out + "_models.csv", result["models"])
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out}.json" + ("" if args.no_scan else f", {args.out}_scan.csv")
          + ("" if args.no_models else f", {args.out}_models.csv"))
    return result


@contextlib.contextmanager
def interpreter_mode():
    """--interpret: TRITON_INTERPRET=1, and the "triton" backend let onto CPU tensors (the registry
    keeps it to CUDA); both undone on exit, so that main() can run inside a test process."""
    from vmamba.ops import register_backend
    from vmamba.ops.backends import _BACKENDS

    old_env = os.environ.get("TRITON_INTERPRET")
    old = _BACKENDS["triton"]
    os.environ["TRITON_INTERPRET"] = "1"
    register_backend("triton", old.fn, devices=("cpu", "cuda"), dtypes=old.dtypes, priority=old.priority,
                     is_available=lambda: True, description=old.description, cross_fn=old.cross_fn)
    try:
        yield
    finally:
        _BACKENDS["triton"] = old
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env


if __name__ == "__main__":
    main()
