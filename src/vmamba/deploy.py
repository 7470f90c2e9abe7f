"""Deployment: torch.compile without batch-size recompiles, torch.export and ONNX files.

* :func:`compile_model` - ``torch.compile`` with the batch dimension marked dynamic, so a new
  batch size never recompiles (fullgraph on the ``"torch"`` backend and on the kernel backends,
  whose scans are ``torch.library`` custom ops); ``freeze=True`` for inference deployments.
* :func:`export_program` - a ``torch.export`` program with a dynamic batch and, optionally,
  dynamic height and width (multiples of 32): the scan's carry over chunks is then traced as a
  ``scan`` higher-order op, so one graph serves every size.
* :func:`export_onnx` - the same as an ONNX file (``onnx`` + ``onnxscript`` needed), with
  metadata saying which sizes it accepts; :class:`OnnxModel` runs one in onnxruntime and checks
  the input's shape against that metadata, with an error naming the size expected.

Exports always trace the portable ``"torch"`` scan (the fused CPU and Triton kernels are not
ONNX operators); the model's own backend is restored afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

STRIDE = 32  # total downsampling of every zoo model: dynamic sizes are multiples of it
MAX_SIDE = 8192


class ExportError(RuntimeError):
    """An export that cannot be made, or an input an exported file does not accept."""


class CompiledModel(nn.Module):
    """``torch.compile(model)`` whose inputs get their batch dimension marked dynamic, so that
    changing only the batch size does not recompile. ``.model`` is the eager module.

    PyTorch specialises a size of 1: batch 1 gets a graph of its own (compiled once, on first
    use); every batch size >= 2 shares one graph.

    With ``freeze=True`` (inference only) Inductor bakes the weights into the graph as constants
    (its ``freezing``), which lets it pre-pack the products and convolutions for oneDNN and fuse
    their epilogues: on CPU this is the fast compiled path (see :func:`compile_model`). Calls then
    run without gradients, and a call after the model's parameters or buffers changed (an
    optimizer step, ``load_state_dict``, ``.to()``) raises instead of using the stale weights.
    The check reads each tensor's storage and version counter, so it cannot see writes that
    leave the counter alone: fused optimizers (``torch.optim.AdamW(fused=True)``) and in-place
    writes through ``.data``; call :func:`compile_model` again after those."""

    def __init__(self, model: nn.Module, dynamic_batch: bool = True, freeze: bool = False, **compile_kwargs):
        super().__init__()
        self.model = model
        self.dynamic_batch = dynamic_batch
        self.freeze = freeze
        if freeze:
            if model.training:
                raise ValueError("compile_model(freeze=True) compiles for inference: call model.eval() first")
            if compile_kwargs.get("backend", "inductor") != "inductor":
                raise ValueError(f"compile_model(freeze=True) needs the inductor backend, got "
                                 f"backend={compile_kwargs['backend']!r}")
            self._weights = _weights_state(model)
            # Inductor under a backend of its own, so that Dynamo keeps this compile's cache apart
            # from an unfrozen compile of the same model (which it would otherwise reuse).
            compile_kwargs["backend"] = _inductor_frozen
        self.compiled = torch.compile(model, **compile_kwargs)

    def forward(self, x: torch.Tensor):
        """Run the compiled model on ``x`` (B, C, H, W)."""
        if self.dynamic_batch and not torch.compiler.is_compiling():
            torch._dynamo.maybe_mark_dynamic(x, 0)
        if not self.freeze:
            return self.compiled(x)
        if _weights_state(self.model) != self._weights:
            raise RuntimeError("the model's weights changed after compile_model(freeze=True), which baked them "
                               "into the compiled graph: compile it again")
        # `freezing` is read while Dynamo traces and Inductor compiles, both inside the call (the
        # first, and any recompile); passed as torch.compile's `options` it had no effect (measured).
        from torch._inductor import config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.compiled(x)


def _inductor_frozen(graph, example_inputs):
    """Inductor (its ``freezing`` is switched on around the calls, see CompiledModel.forward)."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph, example_inputs)


def _weights_state(model: nn.Module) -> tuple:
    """Where every parameter and buffer lives and how often it was changed in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def compile_model(model: nn.Module, dynamic_batch: bool = True, fullgraph: bool = True, freeze: bool = False,
                  **kwargs) -> CompiledModel:
    """``torch.compile`` a vmamba model (fullgraph by default); see :class:`CompiledModel`.

    Other keyword arguments go to ``torch.compile`` (``mode``, ``backend``, ...). Works in eval
    and in training (the scan backends are traceable or custom ops with autograd formulas).

    ``freeze=True`` is for inference deployments: the weights become constants of the graph
    (Inductor's freezing), so its products and convolutions run on pre-packed oneDNN weights with
    fused epilogues. On CPU that is what makes the compiled model faster than eager: on a 2-vCPU
    Xeon, ``vmamba_tiny_s1l8`` 1.08x / 1.09x eager at batch 1 / 8 frozen, 0.92-0.98x without
    (docs/cpu.md). The model must be in eval mode; calls run without gradients and refuse to run
    once the model's weights have changed (as far as version counters tell, see
    :class:`CompiledModel`).
    """
    return CompiledModel(model, dynamic_batch=dynamic_batch, fullgraph=fullgraph, freeze=freeze, **kwargs)


@contextlib.contextmanager
def _exportable(model: nn.Module, backend: str):
    """Eval mode and the given scan backend for the duration of an export."""
    config = getattr(model, "config", {})
    previous, was_training = config.get("scan_backend"), model.training
    if previous is not None and previous != backend:
        model.set_scan_backend(backend)
    model.eval()
    try:
        yield model
    finally:
        if previous is not None and previous != backend:
            model.set_scan_backend(previous)
        model.train(was_training)


def _check_size(size: Sequence[int], dynamic_size: bool) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ExportError(f"size must be (height, width) with positive sides, got {tuple(size)}")
    h, w = (int(s) for s in size)
    if dynamic_size and (h % STRIDE or w % STRIDE):
        raise ExportError(f"dynamic_size: the example size must be a multiple of {STRIDE}, got {h}x{w}")
    return h, w


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool):
    from torch.export import Dim

    dims = {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1, max=65536)
    if dynamic_size:
        dims[2] = STRIDE * Dim("h_blocks", min=1, max=MAX_SIDE // STRIDE)
        dims[3] = STRIDE * Dim("w_blocks", min=1, max=MAX_SIDE // STRIDE)
    return (dims,) if dims else None


def _example(model: nn.Module, size, batch: int, dynamic_batch: bool) -> torch.Tensor:
    # A dynamic dimension of size 1 would be traced as the constant 1: give the tracer 2.
    b = max(2, batch) if dynamic_batch else batch
    p = next(model.parameters(), None)
    return torch.randn(b, getattr(model, "in_chans", 3), *size, device=p.device if p is not None else "cpu")


def export_program(model: nn.Module, size: Sequence[int] = (224, 224), batch: int = 1, dynamic_batch: bool = True,
                   dynamic_size: bool = False, backend: str = "torch"):
    """``torch.export`` a model (traced in eval mode) and return the ``ExportedProgram``.

    Args:
        size: (height, width) of the example input; the only size accepted unless ``dynamic_size``.
        batch: the batch size, when it is not dynamic.
        dynamic_batch: any batch size >= 1.
        dynamic_size: any height and width that are multiples of 32 (up to 8192).
        backend: the scan backend traced (``"torch"`` is portable; a kernel backend's custom op
            stays in the program and needs ``import vmamba`` where the program is loaded).
    """
    h, w = _check_size(size, dynamic_size)
    with _exportable(model, backend), torch.no_grad():
        x = _example(model, (h, w), batch, dynamic_batch)
        return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_size))


def accepted_inputs(model: nn.Module, size, batch: int, dynamic_batch: bool, dynamic_size: bool) -> dict:
    """The metadata stored with an export: the input shape it accepts and the preprocessing."""
    h, w = (int(s) for s in size)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return dict(
        architecture=getattr(model, "config", {}).get("architecture", type(model).__name__),
        in_chans=getattr(model, "in_chans", 3), height=None if dynamic_size else h, width=None if dynamic_size else w,
        batch=None if dynamic_batch else batch, size_multiple=STRIDE if dynamic_size else None,
        mean=list(cfg.get("mean", ())), std=list(cfg.get("std", ())), crop_pct=cfg.get("crop_pct"),
        interpolation=cfg.get("interpolation"), num_classes=getattr(model, "num_classes", None),
    )


def check_input(shape: Sequence[int], accepted: dict, source: str = "this file") -> None:
    """Raise :class:`ExportError` naming the expected shape when ``shape`` is not accepted."""
    want = (accepted.get("batch") or "N", accepted.get("in_chans", 3),
            accepted.get("height") or f"{STRIDE}k", accepted.get("width") or f"{STRIDE}k")
    problem = None
    if len(shape) != 4:
        problem = f"a 4-D (batch, channels, height, width) input, got {len(shape)}-D {tuple(shape)}"
    elif accepted.get("batch") and shape[0] != accepted["batch"]:
        problem = f"batch {accepted['batch']}, got {shape[0]} (export with a dynamic batch to vary it)"
    elif shape[1] != accepted.get("in_chans", 3):
        problem = f"{accepted.get('in_chans', 3)} channels, got {shape[1]}"
    elif accepted.get("height") and tuple(shape[2:]) != (accepted["height"], accepted["width"]):
        problem = (f"height x width {accepted['height']}x{accepted['width']}, got {shape[2]}x{shape[3]} "
                   f"(re-export with that size, or with dynamic_size / --dynamic-size)")
    elif accepted.get("size_multiple") and (shape[2] % STRIDE or shape[3] % STRIDE or min(shape[2:]) < STRIDE):
        problem = f"height and width that are multiples of {STRIDE}, got {shape[2]}x{shape[3]}"
    if problem:
        raise ExportError(f"{source} accepts inputs of shape {want}: expected {problem}")


def save_program(program, path: str | os.PathLike, accepted: dict) -> Path:
    """Write an ``ExportedProgram`` (``.pt2``) with the accepted-input metadata beside its graph."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path), extra_files={"vmamba.json": json.dumps(accepted)})
    return path


class ExportedModel:
    """A ``.pt2`` file written by :func:`save_program` (or ``vmamba export --format pt2``),
    callable on tensors, with the input checked against what the file accepts."""

    def __init__(self, path: str | os.PathLike):
        extra = {"vmamba.json": ""}
        self.path = str(path)
        self.program = torch.export.load(self.path, extra_files=extra)
        self.accepted = json.loads(extra["vmamba.json"] or "{}")
        self.module = self.program.module()

    def __call__(self, x: torch.Tensor):
        if self.accepted:
            check_input(x.shape, self.accepted, self.path)
        return self.module(x)


def _require_onnx():
    missing = []
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'vmamba[onnx]'")


def export_onnx(model: nn.Module, path: str | os.PathLike, size: Sequence[int] = (224, 224), batch: int = 1,
                dynamic_batch: bool = True, dynamic_size: bool = False, opset: int = 18) -> Path:
    """Export a model to an ONNX file (through ``torch.export``); returns the path.

    The file's input is ``image`` (B, 3, H, W), normalised as the model's ``pretrained_cfg``
    says; its output ``logits`` (or ``feature0..3`` for a features-only backbone). Accepted
    shapes (see :func:`export_program` for the arguments) and preprocessing are stored in the
    file's metadata under ``vmamba``; :class:`OnnxModel` enforces them.
    """
    _require_onnx()
    import onnx

    h, w = _check_size(size, dynamic_size)
    with _exportable(model, "torch"), torch.no_grad():
        x = _example(model, (h, w), batch, dynamic_batch)
        n_out = len(model(x)) if getattr(model, "config", {}).get("features_only") else 1
        outputs = ["logits"] if n_out == 1 else [f"feature{i}" for i in range(n_out)]
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["image"],
                                    output_names=outputs, verbose=False,
                                    dynamic_shapes=_dynamic_shapes(dynamic_batch, dynamic_size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vmamba", json.dumps(accepted_inputs(model, (h, w), batch, dynamic_batch, dynamic_size))
    onnx.save(proto, str(path))
    return path


class OnnxModel:
    """An ONNX file from :func:`export_onnx`, run in onnxruntime (CPU unless ``providers`` say
    otherwise). Call it with a float tensor or array (B, 3, H, W); returns a tensor (or a list
    for several outputs). The input shape is checked against the file's metadata first."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("running ONNX files needs onnxruntime: pip install 'vmamba[onnx]'") from None
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types for a corrupt file
            raise ExportError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.accepted = json.loads(meta["vmamba"]) if "vmamba" in meta else {}
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else x
        if self.accepted:
            check_input(arr.shape, self.accepted, self.path)
        outs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: arr})]
        return outs[0] if len(outs) == 1 else outs
