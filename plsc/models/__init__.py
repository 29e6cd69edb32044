"""Model family: ViT (vit.py) built from reusable blocks (layers.py); R50+ViT hybrid (hybrid.py).
The architecture and the named variants are data in plsc/vit_spec.py.

Importing this package registers every model factory in plsc.registry.MODELS.
"""
from .. import registry
from . import layers, vit  # noqa: F401
from .factories import register_family
from .hybrid import ViTHybrid
from .vit import VisionTransformer

register_family(registry.MODELS)


def build_model(cfg):
    """Build a model from a config dict {'name': <registered name>, **keyword arguments}."""
    return registry.MODELS.build(dict(cfg), section="Model")


__all__ = ["build_model", "VisionTransformer", "ViTHybrid", "layers", "vit"]
