"""Models: SS2D, VSS blocks, the VSSM backbone and the registered model zoo."""
from . import vmamba as _zoo  # noqa: F401  (registers the zoo)
from .official import from_official_config
from .registry import create_model, is_model, list_models, register_model
from .ss2d import SS2D
from .vmamba import ZOO, VSSBlock, VSSM, VSSMFeatures, VSSStage

__all__ = ["from_official_config", "create_model", "list_models", "is_model", "register_model", "SS2D", "VSSBlock",
           "VSSStage", "VSSM", "VSSMFeatures", "ZOO"]
