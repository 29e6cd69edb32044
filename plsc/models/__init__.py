"""Model family: ViT (vit.py) built from reusable blocks (layers.py); R50+ViT hybrid (hybrid.py).

Importing this package registers every model factory in plsc.registry.MODELS.
"""
import importlib.util

from ..registry import MODELS
from . import layers, vit  # noqa: F401  (registers VisionTransformer and the ViT_* factories)
from .vit import VisionTransformer

# hybrid.py (R50+ViT-B/16) is written separately; import it when it exists. A plain
# try/except ImportError would also hide genuine import errors inside hybrid.py.
if importlib.util.find_spec(__name__ + ".hybrid") is not None:
    from . import hybrid  # noqa: F401


def build_model(cfg):
    """Build a model from a config dict {'name': <registered name>, **keyword arguments}."""
    return MODELS.build(dict(cfg))


__all__ = ["build_model", "VisionTransformer", "layers", "vit"]
