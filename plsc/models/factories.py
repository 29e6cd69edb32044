"""Registering the ViT family: the two classes and one factory per line of vit_spec.VARIANTS."""
import inspect

from ..vit_spec import VARIANTS
from .hybrid import ViTHybrid
from .vit import VisionTransformer, check_vit


def model_class(spec):
    return VisionTransformer if spec.resnet_layers is None else ViTHybrid


def make_factory(name, variant):
    """A function building the variant, `name(**overrides)`. Its __signature__ is the class's
    keywords with the variant's spec as defaults, so the registry (and the config validator)
    see every accepted key and its real default."""
    cls, preset = model_class(variant.spec), variant.spec.config()

    def factory(**kwargs):
        return cls(**{**preset, **kwargs})

    params = inspect.signature(cls).parameters.values()
    factory.__signature__ = inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=preset.get(p.name, p.default))
         for p in params])
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = variant.doc
    factory.spec = variant.spec
    return factory


def register_family(registry):
    """Register VisionTransformer, ViTHybrid and every named variant in `registry`."""
    registry.register("VisionTransformer", check=check_vit)(VisionTransformer)
    registry.register("ViTHybrid", check=check_vit)(ViTHybrid)
    for name, variant in VARIANTS.items():
        # ViTHybrid runs VisionTransformer.__init__ too: the same cross-key rules hold
        registry.register(name, check=check_vit)(make_factory(name, variant))
