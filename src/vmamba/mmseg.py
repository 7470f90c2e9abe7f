"""MMSegmentation integration: ``import vmamba.mmseg`` registers every zoo model as a backbone.

Registered in ``mmseg.registry.MODELS``: ``type='VMamba'`` (with ``arch=``) and each zoo name
(``type='vmamba_tiny_s1l8'``, ...); see :class:`vmamba.dense.backbone.VMambaBackbone`. In an
OpenMMLab config: ``custom_imports = dict(imports=['vmamba.mmseg'], allow_failed_imports=False)``.
The paper's configs ship in ``vmamba/dense/configs/mmseg`` (``vmamba dense configs``).
Never imported by ``import vmamba``.
"""
try:
    import mmengine  # noqa: F401
    import mmseg  # noqa: F401
except ImportError as _e:
    raise ImportError(f"vmamba.mmseg needs the OpenMMLab stack ({_e}); install it with "
                      f"`bash scripts/install_mm.sh` (see docs/dense.md)") from _e

from .dense import compat as _compat  # noqa: E402

_compat.apply()
_compat.import_mmseg_models()

from mmseg.registry import MODELS  # noqa: E402

from .dense import load_dense_checkpoint  # noqa: E402,F401
from .dense.backbone import VMambaBackbone, load_backbone_weights, register_backbones  # noqa: E402

BACKBONES = register_backbones(MODELS)

__all__ = ["VMambaBackbone", "BACKBONES", "load_backbone_weights", "load_dense_checkpoint"]
