"""vmamba: VMamba, the Visual State Space Model (arXiv 2401.10166), in PyTorch."""
import sys as _sys

from . import ops
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_weights
from .pretrained import from_pretrained, save_pretrained
from .models import VSSM, VSSMFeatures, create_model, from_official_config, list_models, register_model

from .timm_compat import register_timm_models

__version__ = "0.1.0"

if "timm" in _sys.modules:  # timm already imported: make the zoo reachable through it too
    try:
        register_timm_models()
    except Exception as _e:  # a broken timm must not break vmamba
        import warnings as _warnings

        _warnings.warn(f"vmamba: could not register models with timm ({_e})")
__all__ = ["ops", "load_checkpoint", "load_model", "save_weights", "CheckpointError", "create_model", "from_official_config", "list_models", "register_model", "register_timm_models", "save_pretrained", "from_pretrained", "VSSM", "VSSMFeatures", "__version__"]
