"""The training configuration: one dataclass, named presets, config files, command-line flags.

Precedence: dataclass defaults < preset < config file (JSON or TOML) < explicit overrides.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..models.vmamba import IMAGENET_MEAN, IMAGENET_STD
from .datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD


class ConfigError(ValueError):
    """A training option has a value that is not allowed (the message names the flag)."""


@dataclass
class TrainConfig:
    """Everything a training run needs; each field is also a ``vmamba train --flag`` (see HELP)."""

    # data
    data: str = "fashion-mnist"
    out: str = "runs/vmamba"
    img_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    workers: int = -1
    strict_data: bool = False
    val_fraction: float = 0.1
    # model
    model: str = "vmamba_tiny_s1l8"
    model_args: dict = field(default_factory=dict)
    pretrained: bool = False
    drop_path: float = -1.0
    grad_checkpointing: bool = False
    compile: bool = False
    # optimisation (the paper's ImageNet-1K recipe)
    epochs: int = 300
    train_images: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    lr_base_batch: int = 1024
    warmup_epochs: float = 20
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 5.0
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment: str = "rand-m9-mstd0.5"
    color_jitter: float = 0.4
    reprob: float = 0.25
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    ema: bool = True
    ema_decay: float = 0.9999
    amp: str = "auto"
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    resume: str = ""
    max_steps_per_epoch: int = 0
    log_interval: int = 20
    progress: bool = True
    preset: str = "imagenet"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


HELP = dict(
    data="'fashion-mnist' (built-in: full set if installed, else the shipped subset; add -full or -subset "
         "to force one) or an ImageFolder root holding train/<class>/* and val/<class>/*",
    out="output folder: checkpoints, metrics, curves, final weights",
    img_size="training and evaluation resolution (square)",
    in_chans="image channels (1: grayscale, 3: RGB)",
    mean="normalisation mean per channel (0..1 scale)",
    std="normalisation std per channel",
    interpolation="resampling: bicubic, bilinear, nearest, lanczos",
    crop_pct="evaluation: resize to img_size/crop_pct, then centre-crop img_size",
    workers="data-loading processes per training process; -1: 0 for in-memory data, else min(8, CPUs)",
    strict_data="fail on an unreadable image instead of skipping and counting it",
    val_fraction="share of the training images held out (per class, split seed 0) to validate on, when the data "
                 "has no val split of its own (the built-in set; a folder without val/)",
    model="architecture, one of `vmamba models`",
    model_args='JSON overrides for create_model, e.g. \'{"dims": 32, "depths": [1, 1, 2, 1]}\'',
    pretrained="start from the model's published ImageNet weights (downloaded once; a new head for your classes)",
    drop_path="stochastic-depth rate; -1: the model's own (per model, as in the paper)",
    grad_checkpointing="recompute blocks in the backward pass to save memory",
    compile="torch.compile the model",
    epochs="training epochs",
    train_images="when > 0: train on about this many images (whole epochs, at least 1) instead of --epochs; "
                 "giving --epochs turns it off",
    batch_size="images per step per process",
    lr="peak learning rate at lr_base_batch; scaled linearly with the global batch",
    min_lr="final learning rate of the cosine (scaled like lr)",
    warmup_lr="learning rate at the start of the warm-up (scaled like lr)",
    lr_base_batch="the global batch size that lr, min_lr and warmup_lr are given for",
    warmup_epochs="linear warm-up length in epochs (may be fractional)",
    weight_decay="AdamW weight decay (never on 1-D parameters, biases, A_logs, Ds)",
    betas="AdamW betas",
    eps="AdamW epsilon",
    clip_grad="gradient-norm clipping; 0: off",
    label_smoothing="label smoothing",
    mixup="mixup alpha; 0: off",
    cutmix="cutmix alpha; 0: off",
    mixup_prob="probability of mixing a batch",
    mixup_switch_prob="probability of cutmix instead of mixup when both are on",
    randaugment="timm-style RandAugment via kornia: rand-m<0..10>[-n<ops>][-mstd<std>][-inc0], e.g. "
                "rand-m9-mstd0.5 (magnitude noise drawn per batch); inc1 is refused (no kornia counterpart); '': off",
    color_jitter="colour-jitter strength, used only when randaugment is off (as in timm)",
    reprob="random-erasing probability",
    scale="random-resized-crop area range",
    ratio="random-resized-crop aspect-ratio range",
    hflip="horizontal-flip probability",
    ema="keep an exponential moving average of the weights",
    ema_decay="EMA decay per step",
    amp="mixed precision: auto (on for CUDA), on, off",
    seed="random seed",
    device="auto, cpu, cuda, cuda:1, ...",
    threads="CPU threads per process (torch.set_num_threads); 0: torch's default. On a CPU shared with "
            "other jobs, 1 avoids the slowdown of oversubscribed threads",
    resume="checkpoint to resume from; 'auto': <out>/last.pt when it exists (a finished run is reported again)",
    max_steps_per_epoch="cap on steps per epoch (0: none), for quick runs",
    log_interval="progress-bar refresh interval in steps",
    progress="show a live progress bar",
    preset="named recipe the other values start from (see PRESETS)",
)


PRESETS = {
    # The paper's ImageNet-1K recipe -- the dataclass defaults.
    "imagenet": {},
    # The default run: a 1.5M-parameter VMamba on Fashion-MNIST for a budget of 300k training images
    # (5 epochs of the full set, 30 of the shipped subset); measured in docs/training.md.
    "fashion-mnist": dict(
        data="fashion-mnist", out="runs/fashion-mnist", img_size=28, in_chans=1,
        mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, crop_pct=1.0, interpolation="bilinear",
        model="vmamba_tiny_s1l8", model_args=dict(dims=32, depths=[1, 1, 2, 1]), drop_path=0.05,
        epochs=5, train_images=300_000, resume="auto", batch_size=128, lr=2e-3, lr_base_batch=128, min_lr=1e-5,
        warmup_lr=1e-5, warmup_epochs=0.5, label_smoothing=0.1, mixup=0.0, cutmix=0.0, randaugment="",
        color_jitter=0.0, reprob=0.0, scale=(0.85, 1.0), ratio=(0.9, 1.11), ema=False,
    ),
}
PRESETS["default"] = PRESETS["fashion-mnist"]


def load_config_file(path: str | Path) -> dict:
    """Overrides from a JSON (.json) or TOML (.toml) file: a flat table of TrainConfig fields."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a table of options, got {type(values).__name__}")
    return values


def make_config(preset: str = "default", config_file: str | None = None, check_model: bool = True,
                **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset, an optional config file and keyword overrides.

    Every value is checked (:func:`validate`; the model only with ``check_model``); a bad one
    raises :class:`ConfigError` naming the flag, the value and what is allowed.
    """
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: unknown; choose from {sorted(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    given = dict(load_config_file(config_file)) if config_file else {}
    given.update(overrides)
    if "epochs" in given and "train_images" not in given:
        given["train_images"] = 0  # an explicit epoch count wins over the preset's image budget
    values.update(given)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; see `vmamba train --help`")
    cfg = TrainConfig(**values)
    _coerce(cfg)
    validate(cfg, check_model)
    return cfg


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bad(name: str, value, allowed: str) -> ConfigError:
    if isinstance(value, tuple):
        shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    else:
        shown = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return ConfigError(f"{_flag(name)} {shown}: not allowed; expected {allowed}")


def _coerce(cfg: TrainConfig) -> None:
    """Give every field its declared type (values from config files arrive as JSON/TOML types)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        value, kind = getattr(cfg, f.name), hints[f.name]
        origin = typing.get_origin(kind) or kind
        try:
            if origin is tuple:
                if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                    raise TypeError
                value = tuple(float(v) for v in value)
            elif kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float)
                                                                                  and value.is_integer()):
                    raise TypeError
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise TypeError
                value = float(value)
            elif kind is dict or kind is str:
                if not isinstance(value, kind):
                    raise TypeError
        except (TypeError, ValueError):
            names = {tuple: "a list of numbers", bool: "true or false", int: "an integer", float: "a number",
                     dict: "a JSON object", str: "a string"}
            raise _bad(f.name, value, names[origin]) from None
        setattr(cfg, f.name, value)
    if len(cfg.mean) == 1 and len(cfg.std) == 1:  # one value for every channel
        cfg.mean, cfg.std = cfg.mean * cfg.in_chans, cfg.std * cfg.in_chans


def _unit(v) -> bool:
    return 0 <= v <= 1


INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")

# What each numeric or choice option allows: (test, description for the error message).
RULES = {
    "img_size": (lambda v: v >= 1, "an integer >= 1"),
    "in_chans": (lambda v: v >= 1, "an integer >= 1"),
    "std": (lambda v: all(x > 0 for x in v), "values > 0"),
    "interpolation": (lambda v: v in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
    "crop_pct": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "workers": (lambda v: v >= -1, "an integer >= -1 (-1: automatic)"),
    "val_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "drop_path": (lambda v: v == -1 or 0 <= v < 1, "a number in [0, 1), or -1 for the model's own"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train_images": (lambda v: v >= 0, "an integer >= 0 (0: off)"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: 0 < v < math.inf, "a number > 0"),
    "min_lr": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "warmup_lr": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "lr_base_batch": (lambda v: v >= 1, "an integer >= 1"),
    "warmup_epochs": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. 0.9 0.999"),
    "eps": (lambda v: 0 < v < math.inf, "a number > 0"),
    "clip_grad": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: off)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "mixup": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: off)"),
    "cutmix": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: off)"),
    "mixup_prob": (_unit, "a probability in [0, 1]"),
    "mixup_switch_prob": (_unit, "a probability in [0, 1]"),
    "color_jitter": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: off)"),
    "reprob": (_unit, "a probability in [0, 1]"),
    "scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "two numbers lo hi with 0 < lo <= hi <= 1"),
    "ratio": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] < math.inf, "two numbers lo hi with 0 < lo <= hi"),
    "hflip": (_unit, "a probability in [0, 1]"),
    "ema_decay": (_unit, "a number in [0, 1]"),
    "amp": (lambda v: v in ("auto", "on", "off"), "auto, on or off"),
    "seed": (lambda v: 0 <= v < 2**31, "an integer in [0, 2**31)"),
    "threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
    "max_steps_per_epoch": (lambda v: v >= 0, "an integer >= 0 (0: no cap)"),
    "log_interval": (lambda v: v >= 1, "an integer >= 1"),
    "out": (lambda v: v.strip() != "", "a folder name"),
    "data": (lambda v: v.strip() != "", "'fashion-mnist' or a folder"),
}


def validate(cfg: TrainConfig, check_model: bool = True) -> None:
    """Check every option before any work starts; raises :class:`ConfigError` naming the flag,
    its value and what is allowed. ``check_model=False`` leaves ``model`` and ``model_args`` to
    a builder of the caller's (see :func:`vmamba.train.train`)."""
    for name, (test, allowed) in RULES.items():
        value = getattr(cfg, name)
        if isinstance(value, float) and math.isnan(value) or not test(value):
            raise _bad(name, value, allowed)
    if len(cfg.mean) != cfg.in_chans or len(cfg.std) != cfg.in_chans:
        raise ConfigError(f"--mean {list(cfg.mean)} / --std {list(cfg.std)}: not allowed; expected "
                          f"{cfg.in_chans} value(s) each (--in-chans {cfg.in_chans}), or one for all channels")
    if cfg.randaugment:
        from .transforms import parse_randaugment

        try:
            parse_randaugment(cfg.randaugment)
        except ValueError as e:
            raise ConfigError(f"--randaugment {cfg.randaugment!r}: {e}") from None
    if check_model:
        _check_model(cfg)
    check_device(cfg.device)
    _check_data(cfg.data)


def _check_model(cfg: TrainConfig) -> None:
    """The model name is registered and --model-args names only its constructor's arguments.
    (Their values are checked by the constructor when the run builds the model, before data loads.)"""
    import inspect

    from ..models import list_models
    from ..models.vmamba import VSSM, ZOO

    if cfg.model not in list_models() and not (Path(cfg.model) / "config.json").is_file():  # or a saved folder
        raise _bad("model", cfg.model, f"one of {', '.join(list_models())}")
    if cfg.model not in ZOO:  # other registered builders and saved folders check their own
        return
    fixed = {"num_classes", "in_chans", "drop_path_rate"}  # set from the data and --drop-path
    allowed = sorted(set(inspect.signature(VSSM.__init__).parameters) - {"self"} - fixed)
    unknown = sorted(set(cfg.model_args) - set(allowed))
    if unknown:
        hint = " (set by the data, --in-chans and --drop-path)" if set(unknown) & fixed else ""
        raise _bad("model_args", cfg.model_args, f"arguments of the model: {', '.join(allowed)}; "
                                                 f"{unknown} are not{hint}")


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless ``device`` is 'auto' or a torch device this machine has."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise _bad("device", device, "auto, cpu, cuda, cuda:N or another torch device name") from None
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise _bad("device", device, f"a device this machine has: no {dev.type} device is available here "
                                     f"(use auto or cpu)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise _bad("device", device, f"an index below {count} ({count} {dev.type} device(s) here)")


def _check_data(data: str) -> None:
    from .datasets import BUILTIN_NAMES

    if data not in BUILTIN_NAMES and not Path(data).is_dir():
        raise ConfigError(f"--data {data!r}: not a folder and not the built-in dataset "
                          f"({', '.join(BUILTIN_NAMES)})")
