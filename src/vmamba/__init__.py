"""vmamba: VMamba, the Visual State Space Model (arXiv 2401.10166), in PyTorch.

    import vmamba
    model = vmamba.create_model("vmamba_tiny_s1l8", pretrained=True)   # the authors' weights
    model, preprocessing, _ = vmamba.load("path/to/checkpoint_or_folder_or_url")
"""
import sys as _sys

from . import ops
from .checkpoint import CheckpointError, load_checkpoint, save_weights
from .hub import DownloadError
from .models import VSSM, VSSMFeatures, from_official_config, list_models, register_model
from .pretrained import Loaded, Preprocessing, create_model, from_pretrained, load, load_model, save_pretrained

from .timm_compat import register_timm_models

__version__ = "0.1.0"

if "timm" in _sys.modules:  # timm already imported: make the zoo reachable through it too
    try:
        register_timm_models()
    except Exception as _e:  # a broken timm must not break vmamba
        import warnings as _warnings

        _warnings.warn(f"vmamba: could not register models with timm ({_e})")
__all__ = ["ops", "load", "Loaded", "Preprocessing", "load_checkpoint", "load_model", "save_weights", "CheckpointError",
           "DownloadError", "create_model", "from_official_config", "list_models", "register_model",
           "register_timm_models", "save_pretrained", "from_pretrained", "VSSM", "VSSMFeatures", "__version__"]
