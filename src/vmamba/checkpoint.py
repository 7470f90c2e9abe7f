"""Reading and writing weights: the authors' checkpoints, this project's, and safetensors files.

Loading never unpickles arbitrary objects and never changes anything outside the returned data:
``.pth`` files go through ``torch.load(..., weights_only=True)``. Only files that also pickle
classes torch does not know (the authors' training checkpoints carry their yacs config, mmengine
files their message hub) are read by a narrowed unpickler that turns those classes into inert
placeholders (plain dicts that run no code) and allows state to be set only on objects the file
itself created.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import torch
import torch.nn as nn

_SAFETENSORS_SUFFIXES = (".safetensors", ".st")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class LoadReport(NamedTuple):
    """What ``load_checkpoint`` left out (only ever non-empty with ``strict=False``)."""

    missing: list[str]
    unexpected: list[str]


# --- reading ------------------------------------------------------------------------------

# Globals whose presence in a checkpoint can only mean an attempt to run code: refused outright
# (everything else a file names that torch's weights_only loader does not know becomes an inert
# placeholder, so refusing is for a clear message, not for safety).
_REFUSED_MODULES = ("builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "shutil",
                    "importlib", "runpy", "pickle", "marshal", "types", "socket", "ctypes")
# mmengine's message hub pickles getattr(HistoryBuffer, 'mean'); as a placeholder it is inert.
_INERT_BUILTINS = ("builtins.getattr", "__builtin__.getattr")


def _placeholder(qualified: str) -> type:
    """An inert stand-in for the pickled global ``module.Name``: a dict that runs no code.

    Called (REDUCE) it records its arguments; its pickled state and items (BUILD, SETITEMS,
    APPENDS) are stored as entries. Nothing outside the new object is touched.
    """
    module, _, name = qualified.rpartition(".")

    def __init__(self, *args, **kwargs):
        dict.__init__(self, args=list(args), **kwargs)

    def __setstate__(self, state):
        self["state"] = state

    def append(self, item):
        self.setdefault("items", []).append(item)

    def extend(self, items):
        self.setdefault("items", []).extend(items)

    return type(name, (dict,), {"__init__": __init__, "__module__": module, "__qualname__": name,
                                "__setstate__": __setstate__, "append": append, "extend": extend,
                                "__doc__": f"Placeholder for {qualified} found in a checkpoint."})


def _refused(qualified: str) -> bool:
    return qualified.split(".", 1)[0] in _REFUSED_MODULES and qualified not in _INERT_BUILTINS


class _PlaceholderUnpickler(pickle._Unpickler):
    """An unpickler that resolves torch's weights_only globals and makes every other global an
    inert placeholder, so that no code from the file runs and nothing outside the returned data
    changes.

    It is Python's own unpickler with the opcodes that mutate an object on the stack narrowed to
    what torch's weights_only unpickler allows: BUILD (``__setstate__`` / attribute setting) only
    on placeholders, plain tensors, parameters and OrderedDicts (a state dict's ``_metadata``);
    SETITEM(S) only on dicts; APPEND(S) only on lists and placeholders. BUILD on an allowed
    global itself (a torch function, a class) would otherwise set attributes on objects shared
    with the rest of the process.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        from torch._weights_only_unpickler import _get_allowed_globals

        qualified = f"{module}.{name}"
        allowed = _get_allowed_globals()
        if qualified in allowed:
            return allowed[qualified]
        if _refused(qualified):
            raise pickle.UnpicklingError(f"the file asks to call {qualified}; refusing to load it")
        if qualified not in self._placeholders:
            self._placeholders[qualified] = _placeholder(qualified)
        return self._placeholders[qualified]

    def _is_placeholder(self, obj) -> bool:
        return type(obj) in self._placeholders.values()

    def _check_callable(self, opcode: str, func) -> None:
        """REDUCE / NEWOBJ / OBJ may only call what ``find_class`` handed out."""
        from torch._weights_only_unpickler import _get_allowed_globals

        if not any(func is g for g in (*_get_allowed_globals().values(), *self._placeholders.values())):
            raise pickle.UnpicklingError(f"the file applies {opcode} to {_describe(func)}; refusing to load it")

    def _load_reduce(self):
        self._check_callable("REDUCE", self.stack[-2])
        pickle._Unpickler.load_reduce(self)

    def _load_newobj(self):
        self._check_callable("NEWOBJ", self.stack[-2])
        pickle._Unpickler.load_newobj(self)

    def _load_newobj_ex(self):
        self._check_callable("NEWOBJ_EX", self.stack[-3])
        pickle._Unpickler.load_newobj_ex(self)

    def _load_obj(self):
        if self.stack:  # after MARK: the class, then its arguments
            self._check_callable("OBJ", self.stack[0])
        pickle._Unpickler.load_obj(self)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._is_placeholder(inst):
            inst.__setstate__(state)
        elif type(inst) is torch.Tensor:
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"the file sets the state of {_describe(inst)}; refusing to load it")

    def _check_target(self, opcode: str, kinds: tuple) -> None:
        target = self.stack[-1]
        if type(target) not in kinds and not self._is_placeholder(target):
            raise pickle.UnpicklingError(f"the file applies {opcode} to {_describe(target)}; refusing to load it")

    def _load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._check_target("SETITEM", (dict, OrderedDict))
        self.stack[-1][key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        self._check_target("SETITEMS", (dict, OrderedDict))
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_append(self):
        value = self.stack.pop()
        self._check_target("APPEND", (list,))
        self.stack[-1].append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._check_target("APPENDS", (list,))
        self.stack[-1].extend(items)

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.OBJ[0]] = _load_obj
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends


def _describe(obj) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return f"{module}.{name}"


class _PlaceholderPickle:
    """A ``pickle_module`` for ``torch.load`` built on ``_PlaceholderUnpickler``."""

    Unpickler = _PlaceholderUnpickler

    @staticmethod
    def load(f, **kwargs):
        return _PlaceholderUnpickler(f, **kwargs).load()


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``; only for files that pickle classes it does not know
    (the authors' yacs config, mmengine's message hub) the placeholder unpickler above."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e) and "SETITEM" not in str(e):
            raise CheckpointError(f"{path}: not a loadable checkpoint ({_last_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - a broken file fails in many ways inside the unpickler
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_last_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PlaceholderPickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_last_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any failure here means a broken file
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({_last_line(e)})") from None


def _last_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_SUFFIXES:
        return True
    with open(path, "rb") as f:  # 8-byte little-endian header length, then a JSON object
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a weights file: returns (contents, safetensors metadata or {})."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (a folder written by "
                              f"save_pretrained loads with vmamba.load or vmamba.create_model)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from None
    contents = _torch_load(path)
    if not isinstance(contents, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(contents).__name__}")
    return dict(contents), {}


def extract_state_dict(contents: Mapping, use_ema: bool = False, source: str = "checkpoint") -> dict:
    """The model weights inside a checkpoint dict (bare, {'model': ...}, {'model_ema': ...}, ...)."""
    if use_ema:
        if "model_ema" not in contents:
            raise CheckpointError(f"{source}: use_ema=True but there is no 'model_ema' entry "
                                  f"(entries: {sorted(map(str, contents))[:10]})")
        contents = contents["model_ema"]
    else:
        for key in ("model", "state_dict", "module"):
            if key in contents and isinstance(contents[key], Mapping):
                contents = contents[key]
                break
    state = {k: v for k, v in contents.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: no tensors found (entries: {sorted(map(str, contents))[:10]})")
    if all(k.startswith("module.") for k in state if k != "n_averaged"):  # DDP / AveragedModel
        state = {k[len("module."):]: v for k, v in state.items() if k != "n_averaged"}
    return state


# --- converting ---------------------------------------------------------------------------

# The January-2024 release (the weights of the paper's v0 models) used these names.
_LEGACY_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def convert_official_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict:
    """Map the authors' key names (both generations) onto this project's; tensors untouched.

    A detection/segmentation checkpoint ({'backbone.*', 'neck.*', ...}) is reduced to its
    backbone when ``model`` has no 'backbone.' parameters.
    """
    expected = model.state_dict() if model is not None else {}
    if any(k.startswith("backbone.") for k in state) and not any(k.startswith("backbone.") for k in expected):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {}
    for key, value in state.items():
        if key not in expected:
            for pattern, repl in _LEGACY_RENAMES:
                key = pattern.sub(repl, key)
        out[key] = value
    return out


def _fit_linear_shapes(state: dict, expected: Mapping[str, torch.Tensor]) -> dict:
    """1x1-conv weights (O, I, 1, 1) stored for linear layers (O, I) are squeezed, and back."""
    for key, value in state.items():
        want = expected.get(key)
        if want is None or value.shape == want.shape:
            continue
        if value.dim() == 4 and value.shape[2:] == (1, 1) and value.shape[:2] == want.shape:
            state[key] = value[:, :, 0, 0]
        elif value.dim() == 2 and want.dim() == 4 and want.shape == value.shape + (1, 1):
            state[key] = value[:, :, None, None]
    return state


def _listing(title: str, items: list, limit: int = 20) -> str:
    shown = "\n    ".join(map(str, items[:limit]))
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping,
    strict: bool = True,
    use_ema: bool = False,
    exclude: Iterable[str] = (),
    name: str | None = None,
) -> LoadReport:
    """Load weights into ``model``: the authors' checkpoints, this project's, or safetensors.

    Args:
        model: the network (e.g. from ``create_model`` or ``from_official_config``).
        source: a path (``.pth``/``.pt``/``.bin`` read with ``weights_only=True``, or
            ``.safetensors``) or an already loaded dict. Wrapped ({'model': ...}) or bare;
            the authors' January-2024 and later key names; DDP 'module.' prefixes.
        strict: require every key to match. Shape mismatches always raise.
        use_ema: take the 'model_ema' weights of a training checkpoint.
        exclude: key prefixes to skip on both sides, e.g. ``["classifier.head"]`` to fine-tune
            on another number of classes.
        name: how errors name ``source`` when it is a dict (default: its path, or "state dict").

    Returns:
        LoadReport(missing, unexpected): what was left out (empty when strict).

    Raises:
        CheckpointError listing missing, unexpected and wrongly shaped keys; FileNotFoundError.
    """
    name = name or (str(source) if not isinstance(source, Mapping) else "state dict")
    contents = read_checkpoint(source)[0] if not isinstance(source, Mapping) else source
    state = extract_state_dict(contents, use_ema=use_ema, source=name)
    state = convert_official_state_dict(state, model)
    expected = model.state_dict()
    state = _fit_linear_shapes(state, expected)

    exclude = tuple(exclude)
    keep = lambda k: not (exclude and k.startswith(exclude))  # noqa: E731
    state = {k: v for k, v in state.items() if keep(k)}
    missing = [k for k in expected if keep(k) and k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        parts = [f"{name} does not fit {type(model).__name__}:"]
        if mismatched:
            parts.append(_listing("wrong shape", mismatched))
        if missing:
            parts.append(_listing("missing from the checkpoint", missing))
        if unexpected:
            parts.append(_listing("unexpected in the checkpoint", unexpected))
        if any(k.startswith("classifier.head") for k in missing + unexpected) or any(
                m.startswith("classifier.head") for m in mismatched):
            parts.append("  (a different number of classes? pass exclude=['classifier.head'])")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    if missing or unexpected:
        warnings.warn(f"load_checkpoint(strict=False): {len(missing)} missing, {len(unexpected)} "
                      f"unexpected keys; first missing: {missing[:3]}, first unexpected: {unexpected[:3]}")
    return LoadReport(missing, unexpected)


# --- writing ------------------------------------------------------------------------------

def atomic_save(write, path: str | os.PathLike) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file owner-only; keep the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model's weights (and its config, to rebuild it) atomically.

    ``.safetensors`` gives a safetensors file whose metadata holds ``vmamba_config`` (JSON);
    any other suffix gives a ``{'model': state_dict, 'config': ...}`` torch file.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = dict(getattr(model, "config", {}))
    if Path(path).suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import save_file
        meta = {"format": "pt", "vmamba_config": json.dumps(config), **(metadata or {})}
        return atomic_save(lambda tmp: save_file(state, tmp, metadata=meta), path)
    return atomic_save(lambda tmp: torch.save({"model": state, "config": config, **(metadata or {})}, tmp), path)
