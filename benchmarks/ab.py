"""Interleaved A/B timing shared by the benchmark scripts (these machines are noisy: variants are
timed in alternating order within one process and compared by their medians)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_step_ms(step: Callable[[], None], variants: dict[str, Callable[[], None]],
                        rounds: int) -> dict[str, float]:
    """Median ms of ``step()`` under each variant. ``variants`` maps a name to the function that
    switches to it, called before each of its runs. Rounds alternate the order of the variants;
    each timed step follows an untimed one of the same variant (the allocator and caches settle
    for it), and a first, untimed round warms everything up."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name in (names if r % 2 == 0 else names[::-1]):
            variants[name]()
            step()
            t0 = time.perf_counter()
            step()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def median_pair(run_a: Callable[[], object], run_b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of two short calls (one warm-up call each), interleaved, the order
    alternating each round."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (run_a, run_b):
        fn()
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (run_a, run_b)[i]()
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])
