"""Work-arounds for running mmengine 0.10 / mmdet 3.3 / mmseg 1.2 on current torch and numpy.

Applied by ``import vmamba.mmdet`` / ``import vmamba.mmseg``; nothing in site-packages is
patched on disk, and each shim only acts where the problem is present.

1. mmengine reads checkpoints with a bare ``torch.load``; since torch 2.6 that means
   ``weights_only=True``, which refuses mmengine's own checkpoints (they pickle the message
   hub's ``HistoryBuffer`` and numpy arrays), so ``resume``/``load_from`` and the toolkits'
   test scripts fail. :func:`allow_mmengine_checkpoints` allowlists exactly those classes
   for the weights-only unpickler, plus a getattr that only returns HistoryBuffer's
   statistics methods (no arbitrary code can run, unlike turning weights_only off).
2. A torchvision that does not match torch (e.g. the registry's CUDA build next to a CPU
   torch, pulled in by timm) fails to import with RuntimeError, where mmengine's Runner
   (logging its environment) and ``mmseg.models`` (importing timm) only expect ImportError,
   so neither works. :func:`hide_broken` makes such a module raise ImportError for the
   duration of those two imports only (:func:`import_mmseg_models`,
   :func:`runner_env_without_broken_torchvision`); mmseg then lacks its optional
   ``TIMMBackbone``. Nothing changes where torchvision imports.
3. mmengine resolves package-scoped config bases (``_base_ = 'mmdet::...'``) with
   ``pkg_resources``, which setuptools >= 81 no longer ships, so such configs (ours included)
   fail to parse. :func:`locate_packages_without_pkg_resources` gives mmengine's config
   module importlib-based replacements when ``pkg_resources`` is missing. (OpenMMLab's own
   ``tools/train.py`` does not import vmamba before parsing: there, use ``vmamba dense
   train``, or an environment with setuptools < 81.)
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import pickle
import sys
import warnings

import torch

_applied = False


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read the checkpoints that mmengine writes."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: torch.load is not weights-only by default there
        return
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    safe = [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes by their class (np.dtypes.Float64DType, ...)
    safe += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32,
                                         np.int16, np.int8, np.uint8, np.bool_)]

    def history_buffer_getattr(obj, name):
        """The one getattr such checkpoints need: HistoryBuffer's statistics methods, pickled
        as getattr(HistoryBuffer, 'mean'). Anything else is refused."""
        if obj is HistoryBuffer and (name in HistoryBuffer._statistics_methods or (
                not name.startswith("_") and inspect.isfunction(vars(HistoryBuffer).get(name)))):
            return getattr(obj, name)
        raise pickle.UnpicklingError(f"refusing getattr({obj!r}, {name!r}) while loading a checkpoint")

    safe += [(history_buffer_getattr, "builtins.getattr"), (history_buffer_getattr, "__builtin__.getattr")]
    add(safe)


def _module_path(package: str) -> str:
    """Directory of an installed package (mmengine's get_installed_path, without pkg_resources)."""
    import importlib.metadata
    import os

    names = [package, package.replace("-", "_")]
    try:  # a distribution whose import name differs (e.g. mmsegmentation -> mmseg)
        top = importlib.metadata.distribution(package).read_text("top_level.txt") or ""
        names += top.split()
    except importlib.metadata.PackageNotFoundError:
        pass
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            return os.path.dirname(spec.origin)
    raise ModuleNotFoundError(f"package {package!r} is not installed")


def _is_installed(package: str) -> bool:
    try:
        _module_path(package)
        return True
    except (ModuleNotFoundError, ValueError):
        return False


def locate_packages_without_pkg_resources() -> None:
    """Let mmengine parse ``'mmdet::...'`` config bases when pkg_resources is absent."""
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    import mmengine.config.config as mm_config

    mm_config.is_installed = _is_installed
    mm_config.get_installed_path = _module_path


def _broken(name: str) -> bool:
    """Whether module ``name`` is installed but its import fails with a non-ImportError."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 - e.g. RuntimeError from a torchvision built for another torch
        return True
    return False


@contextlib.contextmanager
def hide_broken(*names: str):
    """Inside the block, modules among ``names`` whose import is broken raise ImportError
    (which the toolkits handle) instead of RuntimeError; restored afterwards."""
    hidden = [n for n in names if _broken(n)]
    for n in hidden:
        sys.modules[n] = None  # `import n` now raises ModuleNotFoundError
    try:
        yield hidden
    finally:
        for n in hidden:
            if sys.modules.get(n, 0) is None:
                del sys.modules[n]


def import_mmseg_models() -> None:
    """``import mmseg.models`` with a broken timm/torchvision hidden (mmseg then goes without
    its optional ``TIMMBackbone``)."""
    if "mmseg.models" in sys.modules:
        return
    with hide_broken("torchvision", "timm") as hidden:
        importlib.import_module("mmseg.models")
    if hidden:
        warnings.warn(f"vmamba.mmseg: {' and '.join(hidden)} cannot be imported here (a torchvision "
                      f"built for another torch?); mmseg was imported without its TIMMBackbone")


def runner_env_without_broken_torchvision() -> None:
    """mmengine's Runner logs its environment with ``import torchvision`` and only expects
    ModuleNotFoundError: run that with a broken torchvision hidden."""
    import mmengine.runner.runner as mm_runner

    original = mm_runner.collect_env
    if getattr(original, "_vmamba_compat", False):
        return

    def collect_env():
        with hide_broken("torchvision"):
            return original()

    collect_env._vmamba_compat = True
    mm_runner.collect_env = collect_env


def apply() -> None:
    """Apply every shim that does not import a toolkit (idempotent)."""
    global _applied
    if not _applied:
        allow_mmengine_checkpoints()
        locate_packages_without_pkg_resources()
        runner_env_without_broken_torchvision()
        _applied = True
