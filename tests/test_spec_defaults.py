"""vit_spec.ViTSpec owns the architecture defaults: the model constructors must agree with it,
key by key, so a Model section that leaves a key out means the same thing everywhere."""
import dataclasses
import inspect

from plsc.models.hybrid import ViTHybrid
from plsc.models.vit import VisionTransformer
from plsc.vit_spec import R50_LAYERS, ViTSpec


def test_vit_defaults_match_vitspec():
    params = inspect.signature(VisionTransformer.__init__).parameters
    shared = [f for f in dataclasses.fields(ViTSpec) if f.name in params]
    assert len(shared) >= 11  # every size key VisionTransformer takes
    got = {f.name: params[f.name].default for f in shared}
    want = {f.name: f.default for f in shared}
    assert got == want


def test_hybrid_stem_defaults():
    # A hybrid's stem defaults to R50's (ViTSpec's None means "no stem", i.e. a plain ViT).
    params = inspect.signature(ViTHybrid.__init__).parameters
    assert params["resnet_width"].default == ViTSpec.resnet_width
    assert params["resnet_layers"].default == R50_LAYERS
