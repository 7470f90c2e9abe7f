"""Interleaved A/B timing shared by the benchmark scripts (these machines are noisy: variants are
timed in alternating order within one process and compared by their medians)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


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


def model_step(model: torch.nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """One step of ``model`` on ``x`` as a callable: an inference forward (eval mode, inference
    mode) or a training step (train mode, forward, cross-entropy against class 0, backward)."""
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def step() -> None:
        if not train:
            model.eval()
            with torch.inference_mode():
                model(x)
            return
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()

    return step


def setting_ab(step: Callable[[], None], owner: object, name: str, values: dict[str, object],
               rounds: int) -> dict[str, float]:
    """:func:`interleaved_step_ms` over variants that set ``owner.name`` to each of ``values``
    (variant name -> value); the attribute is restored afterwards."""
    before = getattr(owner, name)
    try:
        return interleaved_step_ms(step, {k: (lambda v=v: setattr(owner, name, v)) for k, v in values.items()},
                                   rounds)
    finally:
        setattr(owner, name, before)
