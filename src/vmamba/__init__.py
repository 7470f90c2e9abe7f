"""vmamba: VMamba, the Visual State Space Model (arXiv 2401.10166), in PyTorch."""
from . import ops
from .models import VSSM, VSSMFeatures, create_model, from_official_config, list_models, register_model

__version__ = "0.1.0"
__all__ = ["ops", "create_model", "from_official_config", "list_models", "register_model", "VSSM", "VSSMFeatures", "__version__"]
