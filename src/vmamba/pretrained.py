"""One loader for every model source: :func:`load` returns the model and its preprocessing.

A source is any of

* a zoo name (``"vmamba_tiny_s1l8"``; with ``pretrained=True`` its default published weights),
* a published tag (``"vmamba_tiny_s1l8.in1k"``, see ``vmamba.list_models(pretrained=True)``),
  downloaded once into torch hub's cache (see :mod:`vmamba.hub`),
* a checkpoint file: this project's (training ``.pt``, ``save_weights`` ``.pth`` /
  ``.safetensors``; they rebuild their own architecture) or the authors' ``.pth`` (name the
  architecture with ``model=``),
* a folder written by :func:`save_pretrained` (also as ``"local-dir:FOLDER"``, timm's spelling),
* an http(s) URL of such a file (cached like the published weights).

:func:`vmamba.create_model`, ``timm.create_model``, ``torch.hub.load``, the CLI commands, the
evaluation API and the dense-prediction backbones all load through here.

The ``save_pretrained`` folder (timm's Hugging Face Hub layout)::

    folder/
      model.safetensors   the weights (its metadata also holds the model config)
      config.json         {"architecture", "num_classes", "num_features", "global_pool",
                           "pretrained_cfg": {input_size, crop_pct, interpolation, mean, std, ...},
                           "model_args": {every constructor argument}}
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple

import torch.nn as nn

from . import hub
from .checkpoint import CheckpointError, atomic_save, load_checkpoint, read_checkpoint, save_weights
from .models import registry
from .models.vmamba import ZOO, VSSM, VSSMFeatures, build_vssm, default_pretrained_cfg
from .models.weights import IMAGENET_MEAN, IMAGENET_STD, PretrainedWeights, get_weights, split_tag

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# pretrained_cfg fields a user may set when saving (the preprocessing a model expects).
DATA_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std", "label_names", "label_descriptions")


# --- preprocessing --------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model, and what its outputs mean.

    Resize the shorter side to ``img_size / crop_pct`` (``interpolation``), centre-crop
    ``img_size``, scale to [0, 1], normalise with ``mean``/``std``. ``label_names`` are the class
    ids in output order (ImageNet: WordNet ids, the names of ``val/<wnid>/`` folders; your
    dataset's folder names), ``label_descriptions`` readable names (or None).
    """

    img_size: int = 224
    in_chans: int = 3
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop_pct: float = 224 / 256
    interpolation: str = "bicubic"
    label_names: tuple | None = None
    label_descriptions: tuple | None = None

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping, in_chans: int = 3) -> "Preprocessing":
        """From timm's ``pretrained_cfg`` fields (input_size, crop_pct, interpolation, mean, std, ...)."""
        names, descriptions = cfg.get("label_names"), cfg.get("label_descriptions")
        return cls(img_size=int(cfg.get("input_size", (3, 224, 224))[-1]), in_chans=in_chans,
                   mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                   crop_pct=float(cfg.get("crop_pct", 224 / 256)), interpolation=cfg.get("interpolation", "bicubic"),
                   label_names=tuple(names) if names else None,
                   label_descriptions=tuple(descriptions) if descriptions else None)

    @classmethod
    def from_data_config(cls, data_cfg: Mapping, class_names=None) -> "Preprocessing":
        """From the ``data_config`` a training run stores (img_size, in_chans, mean, std, ...)."""
        return cls(img_size=int(data_cfg["img_size"]), in_chans=int(data_cfg.get("in_chans", 3)),
                   mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]),
                   crop_pct=float(data_cfg.get("crop_pct", 1.0)), interpolation=data_cfg.get("interpolation", "bicubic"),
                   label_names=tuple(class_names) if class_names else None)

    def data_config(self) -> dict:
        """As the training code's data config dict (img_size, in_chans, mean, std, crop_pct, interpolation)."""
        return dict(img_size=self.img_size, in_chans=self.in_chans, mean=list(self.mean), std=list(self.std),
                    crop_pct=self.crop_pct, interpolation=self.interpolation)

    def pretrained_cfg(self) -> dict:
        """As timm's ``pretrained_cfg`` fields."""
        cfg = dict(input_size=(self.in_chans, self.img_size, self.img_size), crop_pct=self.crop_pct,
                   interpolation=self.interpolation, mean=self.mean, std=self.std)
        if self.label_names:
            cfg["label_names"] = list(self.label_names)
        if self.label_descriptions:
            cfg["label_descriptions"] = list(self.label_descriptions)
        return cfg

    def class_name(self, index: int) -> str:
        """A readable name of output ``index`` (its description, else its label, else the number)."""
        for names in (self.label_descriptions, self.label_names):
            if names and index < len(names):
                return names[index]
        return str(index)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1k (WordNet ids, readable names) in output order: timm's metadata when timm is
    installed (read from its files, timm is not imported), else the copy shipped in vmamba.data."""
    spec = importlib.util.find_spec("timm")
    info = Path(spec.origin).parent / "data" / "_info" if spec and spec.origin else None
    if info is not None and (info / "imagenet_synsets.txt").is_file() and (info / "imagenet_synset_to_lemma.txt").is_file():
        wnids = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                      if "\t" in line)
        if len(wnids) == 1000 and all(w in lemmas for w in wnids):
            return tuple(wnids), tuple(lemmas[w] for w in wnids)
    rows = [line.split("\t", 1) for line in (Path(__file__).parent / "data" / "imagenet_classes.tsv").read_text().splitlines()]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def _imagenet_labels(num_classes: int) -> dict:
    if num_classes != 1000:
        return {}
    wnids, names = imagenet_classes()
    return dict(label_names=wnids, label_descriptions=names)


# --- the loader -----------------------------------------------------------------------------

class Loaded(NamedTuple):
    """What :func:`load` returns."""

    model: nn.Module
    preprocessing: Preprocessing
    weights: PretrainedWeights | None  # the published entry, when the source is one (reported accuracy)


def load(source: str | os.PathLike, *, pretrained: bool = True, model: str | None = None,
         num_classes: int | None = None, use_ema: bool | None = None, features_only: bool = False,
         progress: bool = True, **overrides) -> Loaded:
    """Load a model from any source; returns ``Loaded(model, preprocessing, weights)``.

    Args:
        source: a zoo name, a published tag ``name.tag``, a checkpoint file, a ``save_pretrained``
            folder (or ``"local-dir:FOLDER"``) or an http(s) URL of a checkpoint.
        pretrained: for a bare zoo name: load its default published weights (else random init).
        model: the architecture of a file that stores none (the authors' checkpoints). For a
            file that stores its own, it must agree (a mismatch is an error, never a silent swap).
        num_classes: a new head for this many classes (the rest of the weights load strictly).
        use_ema: take a training checkpoint's EMA weights (default: when the file has them;
            published tags say which weights they take).
        features_only: the multi-scale backbone (:class:`vmamba.VSSMFeatures`); pass
            ``out_indices`` among ``overrides``.
        progress: show a progress bar while downloading.
        **overrides: constructor arguments, e.g. ``drop_path_rate``, ``scan_backend``.

    Raises:
        CheckpointError (DownloadError for fetching) naming the file or URL; ValueError for an
        unknown name or tag; FileNotFoundError.
    """
    text = str(source)
    if features_only:
        overrides["features_only"] = True
    if hub.is_url(text):
        return _load_url(text, model, num_classes, use_ema, progress, overrides)
    name, tag = split_tag(text)
    if registry.is_model(text) or (registry.is_model(name) and not Path(text).exists()):  # names before paths
        if model is not None and model != name:
            raise ValueError(f"source {text!r} and model={model!r} name different architectures")
        if tag is None and not pretrained:
            net = _build(name, num_classes, overrides)
            return Loaded(net, _preprocessing_of(net), None)
        return _load_published(get_weights(text), num_classes, use_ema, progress, overrides)
    if text.startswith("local-dir:") or Path(text).is_dir():
        if model is not None:
            raise ValueError(f"{text}: a save_pretrained folder brings its own architecture; model={model!r} does not apply")
        return _load_folder(Path(text.removeprefix("local-dir:")), num_classes, overrides)
    if Path(text).is_file():
        return _load_file(Path(text), model, num_classes, use_ema, overrides)
    if any(c in text for c in "/\\") or Path(text).suffix:
        raise FileNotFoundError(f"{text}: no such file or folder")
    raise ValueError(registry.unknown_model_message(name) + " (and no such file, folder or URL)")


def _build(name: str, num_classes: int | None, overrides: dict) -> nn.Module:
    kwargs = dict(overrides)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return registry.create_model(name, **kwargs)


def _preprocessing_of(net: nn.Module) -> Preprocessing:
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    return Preprocessing.from_pretrained_cfg(cfg, in_chans=net.in_chans)


def _finish(net: VSSM, num_classes: int | None, overrides: Mapping) -> nn.Module:
    """A new head for ``num_classes``, then the features wrapper when asked for."""
    if num_classes is not None and num_classes != net.num_classes:
        net.reset_classifier(num_classes)
        net.pretrained_cfg = {**net.pretrained_cfg, "num_classes": num_classes}
        for key in ("label_names", "label_descriptions"):
            net.pretrained_cfg.pop(key, None)
    if overrides.get("features_only"):
        net = VSSMFeatures(overrides.get("out_indices", (0, 1, 2, 3)), model=net)
    return net


def _split_features(overrides: dict) -> dict:
    """Constructor arguments without the features-only ones (applied after loading)."""
    if not overrides.get("features_only") and "out_indices" in overrides:
        raise ValueError("out_indices is only meaningful with features_only=True")
    return {k: v for k, v in overrides.items() if k not in ("features_only", "out_indices")}


def _load_published(weights: PretrainedWeights, num_classes: int | None, use_ema: bool | None, progress: bool,
                    overrides: dict) -> Loaded:
    if weights.task != "classification":
        raise ValueError(f"{weights.name} is a {weights.task} checkpoint (the whole detector/segmentor): load it with "
                         f"vmamba.dense.load_dense_checkpoint or mmengine's load_from; classification tags: "
                         f"{registry.list_models(weights.model, pretrained=True)}")
    if use_ema is not None and use_ema != (weights.weights == "model_ema"):
        other = get_weights(f"{weights.model}.in1k{'_ema' if use_ema else ''}")
        weights = other
    arch_overrides = _split_features(overrides)
    net = build_vssm(weights.model, num_classes=weights.num_classes, **arch_overrides)
    ema = weights.weights == "model_ema"

    def check(path: Path) -> CheckpointError | None:  # strictly into the named architecture, before it is kept
        name = f"{weights.file} ({path.parent})"
        try:
            load_checkpoint(net, path, use_ema=ema, name=name)
        except CheckpointError as e:
            if not arch_overrides:
                raise
            try:  # the file may be fine and the overrides change shapes: keep a good file, report those
                load_checkpoint(build_vssm(weights.model, num_classes=weights.num_classes), path, use_ema=ema, name=name)
            except CheckpointError:
                raise e from None
            return e
        return None

    mismatch = hub.fetch_published(weights, check, progress=progress)
    if mismatch is not None:
        raise CheckpointError(f"{weights.name} does not fit {weights.model} built with {arch_overrides}:\n{mismatch}")
    labels = _imagenet_labels(weights.num_classes)
    net.pretrained_cfg = net.default_cfg = {**net.pretrained_cfg, **weights.preprocessing, **labels,
                                            "tag": weights.tag, "url": weights.url, **weights.metrics}
    net = _finish(net, num_classes, overrides)
    return Loaded(net, _preprocessing_of(net), weights)


def _load_url(url: str, model: str | None, num_classes: int | None, use_ema: bool | None, progress: bool,
              overrides: dict) -> Loaded:
    def check(path: Path) -> Loaded:
        return _load_file(path, model, num_classes, use_ema, dict(overrides), name=url)

    return hub.fetch(url, hub.url_file_name(url), check, progress=progress)


def stored_config(contents: Mapping, metadata: Mapping[str, str], source: str = "checkpoint") -> dict | None:
    """The model config a file of this project carries (safetensors metadata or 'config'), or None."""
    if "vmamba_config" in metadata:
        try:
            config = json.loads(metadata["vmamba_config"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: malformed 'vmamba_config' in the safetensors metadata ({e})") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{source}: 'vmamba_config' in the safetensors metadata is not a JSON object")
        return config
    config = contents.get("config")
    return dict(config) if isinstance(config, Mapping) and "depths" in config else None


def _json_field(metadata: Mapping[str, str], key: str, source: str):
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: malformed {key!r} in the safetensors metadata ({e})") from None


def model_from_config(config: Mapping, **overrides) -> nn.Module:
    """Rebuild a network from ``model.config`` (as saved by ``save_weights``)."""
    config = {**config, **overrides}
    architecture = config.pop("architecture", None)
    if architecture in ZOO:
        return build_vssm(architecture, **config)
    if config.pop("features_only", False):
        return VSSMFeatures(**config)
    config.pop("out_indices", None)
    return VSSM(**config)


def _load_file(path: Path, model: str | None, num_classes: int | None, use_ema: bool | None, overrides: dict,
               name: str | None = None) -> Loaded:
    name = name or str(path)
    contents, metadata = read_checkpoint(path)
    config = stored_config(contents, metadata, name)
    ema = ("model_ema" in contents) if use_ema is None else use_ema
    if config is not None:
        stored = config.get("architecture")
        if model is not None and model != stored:
            raise CheckpointError(f"{name} holds a {stored or 'custom VSSM'} (depths {config.get('depths')}, "
                                  f"dims {config.get('dims')}), not {model!r}: drop the model name or give "
                                  f"the matching file")
        new_head = num_classes is not None and num_classes != config.get("num_classes")
        net = model_from_config(config, **overrides, **({"num_classes": num_classes} if num_classes is not None else {}))
        load_checkpoint(net, contents, use_ema=ema, exclude=("classifier.head",) if new_head else (), name=name)
        if "data_config" in metadata:  # a training run's safetensors export
            prep = Preprocessing.from_data_config(_json_field(metadata, "data_config", name),
                                                  _json_field(metadata, "class_names", name) if "class_names" in metadata else None)
        elif isinstance(contents.get("data_config"), Mapping):  # a training checkpoint
            prep = Preprocessing.from_data_config(contents["data_config"], contents.get("class_names"))
        else:
            prep = _preprocessing_of(net)
        if new_head:
            prep = Preprocessing(**{**prep.__dict__, "label_names": None, "label_descriptions": None})
        return Loaded(net, prep, None)
    if model is None:
        raise CheckpointError(f"{name} stores no model config (the authors' checkpoints do not): name its "
                              f"architecture (model=..., --model NAME; see `vmamba models`)")
    features = bool(overrides.get("features_only"))
    file_classes = _head_classes(contents, ema)
    net = _build(model, file_classes if file_classes and not features else None, _split_features(overrides))
    load_checkpoint(net, contents, use_ema=ema, name=name, exclude=("classifier.",) if features else ())
    net.pretrained_cfg = {**net.pretrained_cfg, **_imagenet_labels(net.num_classes)}
    net = _finish(net, num_classes, overrides)
    return Loaded(net, _preprocessing_of(net), None)


def _head_classes(contents: Mapping, ema: bool) -> int | None:
    """Rows of the classifier head in an authors'-format file (None when there is none)."""
    state = contents.get("model_ema" if ema else "model", contents)
    if not isinstance(state, Mapping):
        return None
    for key in ("classifier.head.weight", "head.weight", "module.classifier.head.weight", "module.head.weight"):
        value = state.get(key)
        if value is not None and hasattr(value, "shape") and len(value.shape) >= 1:
            return int(value.shape[0])
    return None


def _load_folder(folder: Path, num_classes: int | None, overrides: dict) -> Loaded:
    doc = read_pretrained_config(folder)
    args = dict(doc["model_args"])
    if doc["architecture"] != "vssm":
        args["architecture"] = doc["architecture"]
    new_head = num_classes is not None and num_classes != args.get("num_classes")
    net = model_from_config(args, **overrides, **({"num_classes": num_classes} if num_classes is not None else {}))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    load_checkpoint(net, weights, exclude=("classifier.head.",) if new_head else ())
    cfg = dict(doc.get("pretrained_cfg") or {})
    cfg.pop("file", None), cfg.pop("source", None)
    if new_head:
        cfg.pop("label_names", None), cfg.pop("label_descriptions", None)
    net.pretrained_cfg = net.default_cfg = {**getattr(net, "pretrained_cfg", {}), **cfg, "num_classes": net.config["num_classes"]}
    return Loaded(net, _preprocessing_of(net), None)


# --- the public shortcuts -------------------------------------------------------------------

def create_model(name: str | os.PathLike, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 **kwargs) -> nn.Module:
    """Build a model, timm-style: ``create_model("vmamba_tiny_s1l8", pretrained=True)``.

    Args:
        name: a zoo name (``vmamba.list_models()``), a published tag ``name.tag`` (weights
            implied), or any other source :func:`load` takes (file, folder, URL).
        pretrained: for a zoo name: its default published weights (downloaded once).
        checkpoint_path: a file to load strictly into the named architecture instead.
        **kwargs: ``num_classes`` (a new head; the backbone keeps its weights), ``features_only``
            and ``out_indices``, ``use_ema``, ``progress``, or constructor overrides.
    """
    if checkpoint_path is not None:
        if pretrained or not registry.is_model(str(name)):
            raise ValueError(f"create_model({str(name)!r}): checkpoint_path goes with a zoo name and pretrained=False")
        return load(checkpoint_path, model=str(name), **kwargs).model
    return load(name, pretrained=pretrained, **kwargs).model


def from_pretrained(source: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` (a folder) or by ``save_weights`` (a file).

    ``overrides`` change constructor arguments (e.g. ``scan_backend="torch"``); ``num_classes``
    other than the stored one makes a new head (the other weights still load strictly).
    """
    num_classes = overrides.pop("num_classes", None)
    return load(source, num_classes=num_classes, **overrides).model


def load_model(path: str | os.PathLike, use_ema: bool = False, **overrides) -> nn.Module:
    """Rebuild and load a model saved by this project (safetensors or torch checkpoint)."""
    num_classes = overrides.pop("num_classes", None)
    return load(path, use_ema=use_ema, num_classes=num_classes, **overrides).model


# --- save_pretrained ------------------------------------------------------------------------

def pretrained_cfg_of(model: nn.Module) -> dict:
    """The model's ``pretrained_cfg`` (timm's preprocessing and head description), made current:
    ``num_classes`` follows the head, tuples become lists (JSON)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["num_classes"] = getattr(model, "num_classes", cfg.get("num_classes", 0))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **pretrained_cfg) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json``; returns the folder.

    Keyword arguments update the stored ``pretrained_cfg`` (only :data:`DATA_FIELDS`), e.g.
    ``mean=..., std=..., input_size=(3, 64, 64), label_names=[...]`` for a model trained on your
    own data, so that evaluation and prediction preprocess images as in training.
    """
    unknown = sorted(set(pretrained_cfg) - set(DATA_FIELDS))
    if unknown:
        raise ValueError(f"save_pretrained: unknown pretrained_cfg field(s) {unknown}; allowed: {list(DATA_FIELDS)}")
    config = dict(getattr(model, "config", None) or {})
    if "depths" not in config:
        raise TypeError(f"save_pretrained: {type(model).__name__} is not a vmamba model (no .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = config.pop("architecture", None) or "vssm"
    cfg = {**pretrained_cfg_of(model), **pretrained_cfg, "architecture": architecture}
    if "input_size" in pretrained_cfg:  # the head's feature map at that size (timm's pool_size)
        cfg["pool_size"] = [-(-pretrained_cfg["input_size"][-2] // 32), -(-pretrained_cfg["input_size"][-1] // 32)]
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    doc = dict(architecture=architecture, num_classes=cfg["num_classes"],
               num_features=getattr(model, "num_features", None), global_pool=config.get("global_pool"),
               pretrained_cfg=cfg, model_args=config)
    save_weights(model, directory / WEIGHTS_NAME)
    atomic_save(lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"), directory / CONFIG_NAME)
    return directory


def read_pretrained_config(directory: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a folder written by :func:`save_pretrained` (clear errors)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a folder written by save_pretrained)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(doc, dict) or "model_args" not in doc or "architecture" not in doc:
        raise CheckpointError(f"{path}: missing 'architecture' or 'model_args'")
    return doc


__all__ = ["Preprocessing", "Loaded", "load", "create_model", "from_pretrained", "load_model", "save_pretrained",
           "read_pretrained_config", "stored_config", "model_from_config", "imagenet_classes", "default_pretrained_cfg"]
