"""The paper's analyses: FLOPs and parameters, throughput and input scaling, effective receptive field."""
from .flops import FlopReport, count_flops, scan_flops

__all__ = ["FlopReport", "count_flops", "scan_flops"]
