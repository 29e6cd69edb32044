"""Registry: registration, build-from-dict and its one-line errors."""
import inspect

import pytest

from plsc.errors import ConfigError, PlscError
from plsc.registry import Registry


def make():
    reg = Registry("model")

    @reg.register()
    class TinyViT:
        def __init__(self, class_num: int = 10, drop_rate: float = 0.0):
            self.class_num, self.drop_rate = class_num, drop_rate

    @reg.register("ViT_tiny_patch16_224")
    def vit_tiny(**kwargs):
        return TinyViT(**kwargs)

    vit_tiny.__signature__ = inspect.signature(TinyViT.__init__).replace(
        parameters=list(inspect.signature(TinyViT.__init__).parameters.values())[1:])
    return reg, TinyViT


def test_build_passes_config_and_runtime_arguments():
    reg, TinyViT = make()
    model = reg.build({"name": "TinyViT", "class_num": 3}, drop_rate=0.5)
    assert isinstance(model, TinyViT)
    assert (model.class_num, model.drop_rate) == (3, 0.5)
    assert reg.names() == ["TinyViT", "ViT_tiny_patch16_224"]
    assert "TinyViT" in reg and "Nope" not in reg


def test_factory_signature_is_what_parameters_reports():
    reg, _ = make()
    assert list(reg.parameters("ViT_tiny_patch16_224")) == ["class_num", "drop_rate"]
    assert list(reg.parameters("TinyViT")) == ["class_num", "drop_rate"]
    model = reg.build({"name": "ViT_tiny_patch16_224", "drop_rate": 0.25})
    assert model.drop_rate == 0.25


def test_unknown_name_suggests_the_closest():
    reg, _ = make()
    with pytest.raises(ConfigError) as e:
        reg.build({"name": "TinyVit"})
    assert str(e.value) == "unknown model 'TinyVit'; did you mean 'TinyViT'?"
    assert isinstance(e.value, PlscError) and e.value.exit_code == 2


def test_unknown_name_without_a_close_one_lists_the_registered():
    reg, _ = make()
    with pytest.raises(ConfigError) as e:
        reg.get("ResNet50")
    assert str(e.value) == "unknown model 'ResNet50'; registered: TinyViT, ViT_tiny_patch16_224"
    with pytest.raises(ConfigError) as e:
        Registry("loss").get("CELoss")
    assert str(e.value) == "unknown loss 'CELoss'; registered: none"


def test_unexpected_keyword_lists_accepted_ones():
    reg, _ = make()
    with pytest.raises(ConfigError) as e:
        reg.build({"name": "TinyViT", "drop_rat": 0.1})
    assert str(e.value) == "unknown key 'TinyViT.drop_rat'; did you mean 'drop_rate'?"
    with pytest.raises(ConfigError) as e:
        reg.build({"name": "ViT_tiny_patch16_224", "depth": 2})
    assert str(e.value) == ("unknown key 'ViT_tiny_patch16_224.depth'; "
                            "accepted keys: name, class_num, drop_rate")


def test_kwargs_component_without_signature_accepts_anything():
    reg = Registry("transform")

    @reg.register()
    def Anything(**kwargs):
        return kwargs

    assert reg.parameters("Anything") is None
    assert reg.build({"name": "Anything", "x": 1}) == {"x": 1}


def test_config_without_name():
    reg, _ = make()
    message = r"^a model config needs a 'name' key, got \{'class_num': 3\}$"
    with pytest.raises(ConfigError, match=message):
        reg.build({"class_num": 3})


def test_duplicate_registration_is_refused_and_names_both():
    reg, TinyViT = make()
    with pytest.raises(KeyError) as e:
        @reg.register("TinyViT")
        class Other:
            pass
    message = e.value.args[0]
    assert message.startswith("model 'TinyViT' is registered twice: ")
    assert "TinyViT" in message.split(": ", 1)[1] and "Other" in message
    assert reg.get("TinyViT") is TinyViT  # the first registration is kept
