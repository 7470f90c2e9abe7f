"""Crash-safe training checkpoints and the final safetensors export.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the target (``os.replace`` is atomic), so a kill at any moment leaves either the previous
file or the new one, never a torn one. Everything stored loads with
``torch.load(weights_only=True)``: tensors, dicts, lists, str/int/float/bool/None.
The file-level pieces (atomic rename, safetensors writing) are :mod:`vmamba.checkpoint`'s.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from ..checkpoint import CheckpointError, atomic_save, save_weights
from .outdir import reported_writes


def save_training_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically: temporary file, flush + fsync, rename. A failed write
    (a full disk) raises :class:`~vmamba.train.outdir.WriteError` naming ``path``; the previous
    file stays as it was."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only

    with reported_writes(path):
        atomic_save(write, path)


def rng_state() -> dict:
    """The Python, numpy and torch RNG states as tensors and plain values (weights_only-loadable)."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint written by :func:`save_training_checkpoint` (weights_only, on CPU)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({e}); use an earlier one or start afresh") from e


def export_safetensors(model: torch.nn.Module, path: str | os.PathLike, class_names: list[str],
                       data_config: dict, **extra) -> None:
    """Write the weights as safetensors whose metadata rebuilds the model (``vmamba.load_model``)
    and its inputs: ``vmamba_config``, ``class_names`` and ``data_config`` (JSON strings)."""
    metadata = {"class_names": json.dumps(class_names), "data_config": json.dumps(data_config)}
    metadata.update({k: json.dumps(v) for k, v in extra.items()})
    with reported_writes(path):
        save_weights(model, path, metadata=metadata)
