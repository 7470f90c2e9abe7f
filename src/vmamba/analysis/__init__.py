"""The paper's analyses: FLOPs and parameters, throughput and input scaling, effective receptive field."""
from .bench import BenchRow, fit_exponents, run_benchmarks
from .erf import area_ratio, erf_map, erf_summary, mass_outside
from ..ops.scan_common import scan_flops
from .flops import FlopReport, count_flops

__all__ = ["FlopReport", "count_flops", "scan_flops", "BenchRow", "run_benchmarks", "fit_exponents",
           "erf_map", "erf_summary", "mass_outside", "area_ratio"]
