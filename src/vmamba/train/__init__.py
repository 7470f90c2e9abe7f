"""Training and evaluation: the Python API behind ``vmamba train``, ``vmamba eval`` and ``vmamba predict``.

    from vmamba.train import make_config, train
    result = train(make_config("default", epochs=2))      # the built-in Fashion-MNIST run
    result = train(make_config("imagenet", data="/data/imagenet", model="vmamba_tiny_s1l8"))

Needs the ``train`` extra (Pillow, tqdm, matplotlib, kornia): ``pip install 'vmamba[train]'``.
"""
from .config import HELP, PRESETS, TrainConfig, make_config
from .datasets import DataError, build_dataset, load_fashion_mnist
from .engine import NonFiniteLossError, evaluate, train
from .inference import evaluate_checkpoint, load_for_inference, predict

__all__ = ["HELP", "PRESETS", "TrainConfig", "make_config", "DataError", "build_dataset", "load_fashion_mnist",
           "NonFiniteLossError", "evaluate", "train", "evaluate_checkpoint", "load_for_inference", "predict"]
