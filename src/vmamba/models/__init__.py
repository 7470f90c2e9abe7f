"""Models: SS2D, VSS blocks, the VSSM backbone, the model zoo and its published weights (as data).

Nothing here reads files: loading weights is :mod:`vmamba.pretrained`.
"""
from .official import from_official_config
from .registry import create_model, is_model, list_models, register_model
from .ss2d import SS2D
from .vmamba import ZOO, VSSBlock, VSSM, VSSMFeatures, VSSStage, build_vssm
from .weights import PRETRAINED, PretrainedWeights, get_weights, pretrained_tags

__all__ = ["from_official_config", "create_model", "list_models", "is_model", "register_model", "SS2D", "VSSBlock",
           "VSSStage", "VSSM", "VSSMFeatures", "ZOO", "build_vssm", "PRETRAINED", "PretrainedWeights",
           "get_weights", "pretrained_tags"]
