"""Config system: YAML layering, overrides, value typing, provenance, validation, CLI plumbing.

Component validation runs against small private registries built here, so these tests do not
depend on (or import) the real models, losses and datasets; one test uses the real ViT model.
"""
import copy
import glob
import inspect
import os
import pickle
import sys
import textwrap
from typing import List, Optional, Union

import pytest

from plsc.cli import common
from plsc.config import (AttrDict, FIXED_SECTIONS, apply_overrides, dump_config, get_config,
                         load_yaml, parse_value, source_of, validate_config)
from plsc.errors import ConfigError, DataError, TrainingError
from plsc.registry import Registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures

def fake_registries():
    """Registries shaped like the real components (names, argument names and types)."""
    regs = {
        "MODELS": Registry("model"), "LOSSES": Registry("loss"),
        "OPTIMIZERS": Registry("optimizer"), "LR_SCHEDULERS": Registry("lr scheduler"),
        "DATASETS": Registry("dataset"), "TRANSFORMS": Registry("transform"),
        "BATCH_TRANSFORMS": Registry("batch transform"), "SAMPLERS": Registry("sampler"),
        "METRICS": Registry("metric"),
    }

    class VisionTransformer:
        def __init__(self, img_size: int = 224, patch_size: int = 16, class_num: int = 1000,
                     drop_rate: float = 0.0, representation_size: Optional[int] = None,
                     head_bias: float = 0.0, act: str = "gelu"):
            pass

    regs["MODELS"].register()(VisionTransformer)
    for name in ("ViT_base_patch16_224", "ViT_base_patch16_384", "ViT_large_patch16_224",
                 "ViT_large_patch16_384"):
        def factory(**kwargs):
            return VisionTransformer(**kwargs)

        params = list(inspect.signature(VisionTransformer.__init__).parameters.values())[1:]
        factory.__signature__ = inspect.Signature([p for p in params if p.name != "img_size"])
        regs["MODELS"].register(name)(factory)

    @regs["LOSSES"].register()
    def ViTCELoss(weight: float = 1.0, epsilon: float = 0.0, type: str = "sigmoid"):
        pass

    @regs["LOSSES"].register()
    def CELoss(weight: float = 1.0, epsilon: Optional[float] = None):
        pass

    @regs["LR_SCHEDULERS"].register()
    def ViTLRScheduler(learning_rate: float, decay_type: str = "cosine", warmup_steps: int = 0,
                       linear_end: float = 1e-5, epochs=None, step_each_epoch=None):
        pass

    @regs["OPTIMIZERS"].register()
    def AdamW(parameters=None, betas: tuple = (0.9, 0.999), epsilon: float = 1e-8,
              weight_decay: float = 0.0, no_weight_decay_name: Optional[str] = None,
              grad_clip: Optional[dict] = None):
        pass

    @regs["OPTIMIZERS"].register()
    def Momentum(parameters=None, momentum: float = 0.9, weight_decay: float = 0.0,
                 grad_clip: Optional[dict] = None):
        pass

    @regs["DATASETS"].register()
    def ImageNetDataset(image_root: str, cls_label_path: str, transform_ops: Optional[list] = None,
                        multi_label: bool = False, class_num: Optional[int] = None,
                        delimiter: str = " "):
        pass

    for name in ("CIFAR10", "CIFAR100"):
        def cifar(data_file: str, mode: str = "train", transform_ops: Optional[list] = None):
            pass

        regs["DATASETS"].register(name)(cifar)

    @regs["TRANSFORMS"].register()
    def DecodeImage(to_rgb: bool = True, channel_first: bool = False):
        pass

    @regs["TRANSFORMS"].register()
    def RandCropImage(size: int, scale=(0.08, 1.0), ratio=None, interpolation: Optional[str] = None,
                      backend: str = "cv2"):
        pass

    @regs["TRANSFORMS"].register()
    def RandFlipImage(flip_code=1):  # unannotated: typed by its default
        pass

    @regs["TRANSFORMS"].register()
    def ResizeImage(size: Optional[Union[int, List[int]]] = None,
                    resize_short: Optional[int] = None,
                    interpolation: Optional[str] = None, backend: str = "cv2"):
        pass

    @regs["TRANSFORMS"].register()
    def CenterCropImage(size: int):
        pass

    @regs["TRANSFORMS"].register()
    def NormalizeImage(scale: Optional[float] = None, mean: Optional[List[float]] = None,
                       std: Optional[List[float]] = None, order: str = "chw"):
        pass

    @regs["TRANSFORMS"].register()
    def ToCHWImage():
        pass

    @regs["BATCH_TRANSFORMS"].register()
    def Mixup(alpha: float = 0.2):
        pass

    @regs["SAMPLERS"].register()
    def DistributedBatchSampler(dataset=None, batch_size: int = 1, shuffle: bool = False,
                                drop_last: bool = False):
        pass

    @regs["METRICS"].register()
    def TopkAcc(topk: List[int] = (1, 5)):
        pass

    return regs


REGS = fake_registries()

MINIMAL = """
Model:
  name: VisionTransformer
  class_num: 10
"""


def write(tmp_path, name, *texts):
    """Write the (each dedented) texts one after the other."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(textwrap.dedent(t) for t in texts))
    return str(path)


def load(path, overrides=None, validate=True):
    return get_config(path, overrides, validate=validate, registries=REGS)


def error_of(fn, *args, **kwargs):
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- value typing

@pytest.mark.parametrize("text, expected", [
    ("3e-3", 0.003), ("1E-8", 1e-8), (".5", 0.5), ("-2.5e+2", -250.0), ("10", 10), ("-3", -3),
    ("True", True), ("true", True), ("False", False), ("false", False),
    ("null", None), ("None", None), ("~", None),
    ("[1,5]", [1, 5]), ("[1, [2, 3e-3], 'a,b']", [1, [2, 0.003], "a,b"]), ("[]", []),
    ("(0.9,0.999)", [0.9, 0.999]), ("(0.9, 0.999)", [0.9, 0.999]), ("(1,)", [1]), ("(7)", 7),
    ("1.0/255.0", 1.0 / 255.0), ("1/4", 0.25),
    ("{name: ClipGradByGlobalNorm, clip_norm: 1}",
     {"name": "ClipGradByGlobalNorm", "clip_norm": 1}),
    ("id", "id"), ("'3e-3'", "3e-3"), ('"True"', "True"), ("''", ""),
    ("./output/", "./output/"), ("pos_embed cls_token", "pos_embed cls_token"),
    ("1.2.3", "1.2.3"), ("1/0", "1/0"), ("[1, 2", "[1, 2"), ("[1,,2]", "[1,,2]"),
])
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, list) and expected and isinstance(expected[0], float):
        assert all(type(v) is float for v in value)


def test_yaml_values_are_typed_like_overrides(tmp_path):
    path = write(tmp_path, "v.yaml", """
        lr: 3e-3
        eps: 1E-8
        half: .5
        betas: (0.9, 0.999)
        scale: 1.0/255.0
        topk: [1, 5]
        ckpt: null
        flag: True
        name: id
        quoted: '3e-3'
        dquoted: "(1, 2)"
        ops:
          - ToCHWImage:
          - DecodeImage: {to_rgb: True}
        1.0/255.0: key stays a string
    """)
    data = load_yaml(path)
    assert data == {"lr": 0.003, "eps": 1e-8, "half": 0.5, "betas": [0.9, 0.999],
                    "scale": 1.0 / 255.0, "topk": [1, 5], "ckpt": None, "flag": True,
                    "name": "id", "quoted": "3e-3", "dquoted": "(1, 2)",
                    "ops": [{"ToCHWImage": None}, {"DecodeImage": {"to_rgb": True}}],
                    "1.0/255.0": "key stays a string"}
    assert type(data["lr"]) is float and type(data["topk"][0]) is int


# ----------------------------------------------------------------------------- AttrDict

def test_attrdict_attribute_access_nested_and_in_lists():
    cfg = AttrDict({"A": {"b": 1}, "L": [{"x": {"y": 2}}, 3]})
    assert cfg.A.b == 1 and cfg.L[0].x.y == 2
    assert isinstance(cfg.L[0], AttrDict) and isinstance(cfg.L[0].x, AttrDict)
    cfg.C = {"d": 4}
    assert cfg["C"].d == 4
    with pytest.raises(AttributeError):
        cfg.missing
    assert not hasattr(cfg, "missing")
    del cfg.C
    assert "C" not in cfg
    clone = copy.deepcopy(cfg)
    assert clone == cfg and isinstance(clone.A, AttrDict) and clone.A is not cfg.A
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# ----------------------------------------------------------------------------- layering

def test_base_chain_two_levels_and_list_of_bases_in_subdirs(tmp_path):
    write(tmp_path, "_base_/runtime.yaml", """
        Global:
          epochs: 300
          seed: 2021
          output_dir: ./runtime/
        Metric:
          Train: [{TopkAcc: {topk: [1, 5]}}]
    """)
    write(tmp_path, "_base_/datasets/d.yaml", """
        _base_: ../runtime.yaml
        Global:
          output_dir: ./dataset/
        DataLoader:
          Train:
            dataset: {name: CIFAR10, data_file: a.tar.gz}
            sampler: {name: DistributedBatchSampler, batch_size: 64}
    """)
    write(tmp_path, "_base_/fp16.yaml", """
        FP16: {level: O2}
        Global:
          seed: 7
    """)
    top = write(tmp_path, "exp/top.yaml", """
        _base_: [../_base_/datasets/d.yaml, ../_base_/fp16.yaml]
        Global:
          epochs: 8
    """, MINIMAL)
    cfg = load(top)
    assert cfg.Global.epochs == 8          # the file overrides its bases
    assert cfg.Global.seed == 7            # later base overrides earlier base
    assert cfg.Global.output_dir == "./dataset/"   # deeper level overrides its own base
    assert cfg.FP16.level == "O2"
    assert cfg.DataLoader.Train.sampler.batch_size == 64
    assert cfg.Metric.Train[0].TopkAcc.topk == [1, 5]
    assert "_base_" not in cfg
    top_src = os.path.normpath(top)
    base = os.path.join(os.path.dirname(top_src), "..", "_base_")
    assert source_of(cfg, "Global.epochs") == top_src
    assert source_of(cfg, "Global.seed") == os.path.normpath(os.path.join(base, "fp16.yaml"))
    assert source_of(cfg, "Global.output_dir") == os.path.normpath(
        os.path.join(base, "datasets", "d.yaml"))
    assert source_of(cfg, "Metric.Train.0.TopkAcc.topk") == os.path.normpath(
        os.path.join(base, "runtime.yaml"))


def test_dicts_merge_lists_replace_delete_replaces(tmp_path):
    write(tmp_path, "base.yaml", """
        Model: {name: VisionTransformer, class_num: 1000, drop_rate: 0.1}
        Optimizer:
          name: AdamW
          betas: [0.8, 0.9]
          weight_decay: 0.3
          grad_clip: {name: ClipGradByGlobalNorm, clip_norm: 1.0}
        Metric:
          Train: [{TopkAcc: {topk: [1, 5]}}, {TopkAcc: {topk: [1]}}]
    """)
    path = write(tmp_path, "x.yaml", """
        _base_: base.yaml
        Model: {class_num: 10}
        Optimizer:
          _delete_: true
          name: Momentum
          momentum: 0.8
        Metric:
          Train: [{TopkAcc: {topk: [2]}}]
    """)
    cfg = load(path)
    assert cfg.Model == {"name": "VisionTransformer", "class_num": 10, "drop_rate": 0.1}
    assert cfg.Optimizer == {"name": "Momentum", "momentum": 0.8}   # nothing from AdamW left
    assert cfg.Metric.Train == [{"TopkAcc": {"topk": [2]}}]
    assert "_delete_" not in dump_config(cfg)
    assert source_of(cfg, "Model.drop_rate") == os.path.normpath(str(tmp_path / "base.yaml"))
    assert source_of(cfg, "Optimizer.momentum") == os.path.normpath(path)


def test_delete_false_merges_and_is_dropped(tmp_path):
    write(tmp_path, "base.yaml", "Model: {name: VisionTransformer, class_num: 3}\n")
    path = write(tmp_path, "x.yaml",
                 "_base_: base.yaml\nModel: {_delete_: false, drop_rate: 0.5}\n")
    assert load(path).Model == {"name": "VisionTransformer", "class_num": 3, "drop_rate": 0.5}


def test_missing_base_names_path_and_referrer(tmp_path):
    path = write(tmp_path, "x.yaml", "_base_: [nope/base.yaml]\n", MINIMAL)
    assert error_of(load, path) == (
        f"{os.path.normpath(path)}: _base_ file 'nope/base.yaml' not found "
        f"(looked for {os.path.normpath(str(tmp_path / 'nope/base.yaml'))})")


def test_base_cycle_names_the_files(tmp_path):
    write(tmp_path, "a.yaml", "_base_: sub/b.yaml\n")
    write(tmp_path, "sub/b.yaml", "_base_: ../a.yaml\n")
    a = os.path.normpath(str(tmp_path / "a.yaml"))
    b = os.path.normpath(str(tmp_path / "sub/b.yaml"))
    assert error_of(load, a) == f"_base_ cycle: {a} -> {b} -> {a}"
    write(tmp_path, "self.yaml", "_base_: self.yaml\n")
    s = os.path.normpath(str(tmp_path / "self.yaml"))
    assert error_of(load, s) == f"_base_ cycle: {s} -> {s}"


def test_bad_base_value(tmp_path):
    path = write(tmp_path, "x.yaml", "_base_: {a: 1}\n")
    assert error_of(load, path) == (f"{os.path.normpath(path)}: _base_ must be a path or a list "
                                    "of paths, got dict {'a': 1}")


def test_config_file_not_found(tmp_path):
    missing = str(tmp_path / "none.yaml")
    assert error_of(load, missing) == f"config file not found: {os.path.normpath(missing)}"


def test_malformed_yaml_reports_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", """
        Global:
          epochs: 3
          seed: [1, 2
        Model: {name: VisionTransformer}
    """)
    message = error_of(load, path)
    assert message == (f"{path}:5: expected ',' or ']', but got ':' "
                       "(while parsing a flow sequence that starts at line 4)")
    path = write(tmp_path, "dup.yaml", "Global:\n  epochs: 3\n  epochs: 4\n")
    assert error_of(load, path) == f"{path}:3: duplicate key 'epochs'"
    path = write(tmp_path, "top.yaml", "- a\n- b\n")
    assert error_of(load, path) == (f"{os.path.normpath(path)}: expected a mapping of sections "
                                    "at the top level, got list ['a', 'b']")


# ----------------------------------------------------------------------------- overrides

def test_overrides_index_lists_create_keys_and_type_values(tmp_path):
    path = write(tmp_path, "x.yaml", """
        DataLoader:
          Train:
            dataset:
              name: ImageNetDataset
              image_root: ./data
              cls_label_path: ./data/train.txt
              transform_ops:
                - DecodeImage: {to_rgb: True}
                - RandCropImage: {size: 224}
                - ToCHWImage:
            sampler: {name: DistributedBatchSampler, batch_size: 8}
    """, MINIMAL)
    o_size = "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=192"
    cfg = load(path, [
        o_size,
        "LRScheduler.name=ViTLRScheduler", "LRScheduler.learning_rate=3e-3",   # new section
        "Optimizer.name=AdamW", "Optimizer.betas=(0.9,0.999)",
        "DataLoader.Train.dataset.transform_ops.2.ToCHWImage=null",
        "Global.output_dir=id", "Global.seed=None", "Global.finetune=True",
        "Model.drop_rate=1", "Global.epochs=5", "Global.epochs=6",    # later wins
    ])
    ops = cfg.DataLoader.Train.dataset.transform_ops
    assert ops[1].RandCropImage.size == 192
    assert ops[2] == {"ToCHWImage": None}
    assert cfg.LRScheduler == {"name": "ViTLRScheduler", "learning_rate": 0.003}
    assert cfg.Optimizer.betas == [0.9, 0.999]
    assert cfg.Global.output_dir == "id" and cfg.Global.seed is None and cfg.Global.finetune is True
    assert cfg.Model.drop_rate == 1.0 and type(cfg.Model.drop_rate) is float  # float takes int
    assert cfg.Global.epochs == 6
    assert source_of(cfg, "Global.epochs") == "-o Global.epochs=6"
    assert source_of(cfg, ("DataLoader", "Train", "dataset", "transform_ops", 1, "RandCropImage",
                           "size")) == "-o " + o_size
    assert source_of(cfg, "DataLoader.Train.dataset.transform_ops.0") == os.path.normpath(path)


def test_override_grows_a_null_entry_into_a_mapping(tmp_path):
    path = write(tmp_path, "x.yaml", "Optimizer: {name: AdamW, grad_clip: null}\n", MINIMAL)
    cfg = load(path, ["Optimizer.grad_clip.name=ClipGradByGlobalNorm",
                      "Optimizer.grad_clip.clip_norm=1"])
    assert cfg.Optimizer.grad_clip == {"name": "ClipGradByGlobalNorm", "clip_norm": 1.0}
    assert type(cfg.Optimizer.grad_clip.clip_norm) is float


def test_override_errors(tmp_path):
    path = write(tmp_path, "x.yaml", "Metric:\n  Train: [{TopkAcc: null}]\n", MINIMAL)
    assert error_of(load, path, ["Global.epochs"]) == (
        "override 'Global.epochs' has no '='; expected -o Key.sub=value")
    assert error_of(load, path, ["Metric.Train.3.TopkAcc.topk=[1]"]) == (
        "override 'Metric.Train.3.TopkAcc.topk=[1]': index 3 out of range for 'Metric.Train' "
        "(list of length 1)")
    assert error_of(load, path, ["Metric.Train.TopkAcc.topk=[1]"]) == (
        "override 'Metric.Train.TopkAcc.topk=[1]': 'Metric.Train' is a list; address its items "
        "by index 0..0 (or add one with '+' / '+N'), got 'TopkAcc'")
    assert error_of(load, path, ["Model.class_num.x=1"]) == (
        "override 'Model.class_num.x=1': 'Model.class_num' is int 10, not a section with keys")
    assert error_of(load, path, ["Global..epochs=1"]) == (
        "override 'Global..epochs=1': bad key path 'Global..epochs'; expected -o Key.sub=value")


def test_new_key_from_override_reaches_validation(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL)
    assert error_of(load, path, ["Global.new=1"]) == (
        "unknown key 'Global.new' (from -o Global.new=1); accepted keys: "
        + ", ".join(FIXED_SECTIONS["Global"]))
    assert error_of(load, path, ["Globl.epochs=1"]) == (
        "unknown key 'Globl' (from -o Globl.epochs=1); did you mean 'Global'?")


# ----------------------------------------------------------------------------- validation

def test_defaults_are_filled_and_fixed_types_converted(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL,
                 "FP16:\n  level: O1\n  GradScaler: {init_loss_scaling: 1024}\n")
    cfg = load(path)
    assert cfg.Global == {k: f.default for k, f in FIXED_SECTIONS["Global"].items()}
    assert cfg.Global.device == "gpu" and cfg.Global.seed is None and cfg.Global.epochs == 1
    assert cfg.FP16.level == "O1" and cfg.FP16.dtype == "float16"
    assert cfg.FP16.GradScaler == {"init_loss_scaling": 1024.0, "incr_ratio": 2.0,
                                   "decr_ratio": 0.5, "incr_every_n_steps": 1000,
                                   "decr_every_n_nan_or_inf": 2, "use_dynamic_loss_scaling": True}
    assert type(cfg.FP16.GradScaler.init_loss_scaling) is float
    assert cfg.DistributedStrategy == {"data_parallel": True, "recompute": False, "sharding": None}
    assert cfg.Export == {"export_type": "paddle", "input_shape": [None, 3, 224, 224]}
    assert cfg.Infer == {"label_file": None, "topk": 5}
    # defaults are copies: changing one config does not leak into the next
    cfg.Export.input_shape[2] = 384
    assert load(path).Export.input_shape == [None, 3, 224, 224]


def test_sharding_subkeys_and_loader_defaults(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, """
        DistributedStrategy: {sharding: {sharding_degree: 2}}
        DataLoader:
          Eval:
            dataset: {name: CIFAR10, data_file: x.tar.gz, mode: test}
            sampler: {name: DistributedBatchSampler, batch_size: 4}
    """)
    cfg = load(path)
    assert cfg.DistributedStrategy.sharding == {"sharding_degree": 2, "sharding_stage": 1, "offload": False}
    assert cfg.DataLoader.Eval.loader == {"num_workers": 0, "use_shared_memory": True}


def test_unknown_key_with_suggestion_from_file_and_override(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Global:\n  epohcs: 3\n")
    assert error_of(load, path) == (
        f"unknown key 'Global.epohcs' (from {path}); did you mean 'Global.epochs'?")
    path = write(tmp_path, "y.yaml", MINIMAL)
    assert error_of(load, path, ["FP16.GradScaler.init_loss_scale=8"]) == (
        "unknown key 'FP16.GradScaler.init_loss_scale' (from -o FP16.GradScaler.init_loss_scale=8);"
        " did you mean 'FP16.GradScaler.init_loss_scaling'?")
    assert error_of(load, path, ["Model.drop_rat=0.1"]) == (
        "unknown key 'Model.drop_rat' (from -o Model.drop_rat=0.1); "
        "did you mean 'Model.drop_rate'?")
    assert error_of(load, path, ["Model.zzz=0.1"]) == (
        "unknown key 'Model.zzz' (from -o Model.zzz=0.1); accepted keys: name, img_size, "
        "patch_size, class_num, drop_rate, representation_size, head_bias, act")


def test_wrong_type_names_expected_got_and_source(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL)
    assert error_of(load, path, ["Global.epochs=ten"]) == (
        "Global.epochs: expected int >= 1, got str 'ten' (from -o Global.epochs=ten)")
    assert error_of(load, path, ["Global.seed=1.5"]) == (
        "Global.seed: expected int or null, got float 1.5 (from -o Global.seed=1.5)")
    assert error_of(load, path, ["Global.finetune=1"]) == (
        "Global.finetune: expected bool, got int 1 (from -o Global.finetune=1)")
    assert error_of(load, path, ["Model.class_num=1e3"]) == (
        "Model.class_num: expected int, got float 1000.0 (from -o Model.class_num=1e3)")
    assert error_of(load, path, ["FP16.fp16_custom_white_list=[True]"]) == (
        "FP16.fp16_custom_white_list: expected list of str, got list [True] "
        "(from -o FP16.fp16_custom_white_list=[True])")
    bad = write(tmp_path, "bad.yaml", MINIMAL, "Global:\n  epochs: 2.5\n")
    assert error_of(load, bad) == f"Global.epochs: expected int >= 1, got float 2.5 (from {bad})"
    bad = write(tmp_path, "sec.yaml", MINIMAL, "Global: [1]\n")
    assert error_of(load, bad) == f"Global: expected a mapping, got list [1] (from {bad})"


def test_enumerated_and_minimum_values(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL)
    assert error_of(load, path, ["Global.device=tpu"]) == (
        "Global.device: expected one of gpu, cpu, xpu, got str 'tpu' (from -o Global.device=tpu)")
    assert error_of(load, path, ["FP16.level=O3"]) == (
        "FP16.level: expected one of O0, O1, O2, got str 'O3' (from -o FP16.level=O3)")
    assert error_of(load, path, ["Global.pos_embed_interp=nearest"]).startswith(
        "Global.pos_embed_interp: expected one of bilinear, bicubic, got str 'nearest'")
    assert error_of(load, path, ["Global.eval_unit=iter"]).startswith(
        "Global.eval_unit: expected one of epoch, step, got str 'iter'")
    assert error_of(load, path, ["Global.accum_steps=0"]) == (
        "Global.accum_steps: expected int >= 1, got int 0 (from -o Global.accum_steps=0)")


def test_model_section_is_required(tmp_path):
    path = write(tmp_path, "x.yaml", "Global: {epochs: 1}\n")
    assert error_of(load, path) == (
        "missing required section 'Model' (the model to build, e.g. Model: "
        "{name: ViT_base_patch16_224, class_num: 1000})")
    path = write(tmp_path, "y.yaml", "Model: {class_num: 3}\n")
    assert error_of(load, path) == (
        "Model: missing key 'name' (the model to build; registered: ViT_base_patch16_224, "
        "ViT_base_patch16_384, ViT_large_patch16_224, ViT_large_patch16_384, VisionTransformer) "
        f"(from {path})")


def test_unknown_component_names(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Loss:\n  Train: [{ViTCELos: {weight: 1}}]\n")
    assert error_of(load, path) == (
        f"Loss.Train.0: unknown loss 'ViTCELos' (from {path}); "
        "did you mean 'ViTCELoss' or 'CELoss'?")
    path = write(tmp_path, "y.yaml", MINIMAL)
    assert error_of(load, path, ["Model.name=ViT_bse_patch16_224"]).startswith(
        "Model.name: unknown model 'ViT_bse_patch16_224' (from -o Model.name=ViT_bse_patch16_224);"
        " did you mean 'ViT_base_patch16_224'")
    assert error_of(load, path, ["Optimizer.name=Lamb"]) == (
        "Optimizer.name: unknown optimizer 'Lamb' (from -o Optimizer.name=Lamb); "
        "registered: AdamW, Momentum")


def test_component_arguments_are_typed(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, """
        LRScheduler: {name: ViTLRScheduler, learning_rate: 3e-3, warmup_steps: 10}
        Optimizer:
          name: AdamW
          betas: (0.9, 0.999)
          weight_decay: 0
          epsilon: 1e-8
        Loss:
          Train: [{ViTCELoss: {weight: 1, epsilon: 1e-4}}]
          Eval: [{CELoss: null}]
        Metric: {Eval: [{TopkAcc: {topk: [1, 5]}}]}
    """)
    cfg = load(path)
    assert cfg.LRScheduler.learning_rate == 0.003
    assert cfg.Optimizer.betas == [0.9, 0.999] and cfg.Optimizer.weight_decay == 0.0
    assert type(cfg.Optimizer.weight_decay) is float
    assert cfg.Loss.Train[0].ViTCELoss == {"weight": 1.0, "epsilon": 1e-4}
    assert type(cfg.Loss.Train[0].ViTCELoss.weight) is float
    assert cfg.Loss.Eval == [{"CELoss": None}]
    assert error_of(load, path, ["LRScheduler.warmup_steps=1.5"]) == (
        "LRScheduler.warmup_steps: expected int, got float 1.5 "
        "(from -o LRScheduler.warmup_steps=1.5)")
    assert error_of(load, path, ["Optimizer.betas=0.9"]) == (
        "Optimizer.betas: expected list, got float 0.9 (from -o Optimizer.betas=0.9)")
    assert error_of(load, path, ["Metric.Eval.0.TopkAcc.topk=[1, 'a']"]) == (
        "Metric.Eval.0.TopkAcc.topk: expected list of int, got list [1, 'a'] "
        "(from -o Metric.Eval.0.TopkAcc.topk=[1, 'a'])")
    assert error_of(load, path, ["Loss.Train.0.ViTCELoss.eps=0.1"]) == (
        "unknown key 'Loss.Train.0.ViTCELoss.eps' (from -o Loss.Train.0.ViTCELoss.eps=0.1); "
        "did you mean 'Loss.Train.0.ViTCELoss.epsilon'?")
    assert error_of(load, path, ["Loss.Test=[]"]) == (
        "unknown key 'Loss.Test' (from -o Loss.Test=[]); accepted keys: Train, Eval")
    assert error_of(load, path, ["Loss.Evl=[]"]) == (
        "unknown key 'Loss.Evl' (from -o Loss.Evl=[]); did you mean 'Loss.Eval'?")


def test_op_lists_must_be_one_key_mappings(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Loss:\n  Train: {CELoss: {weight: 1}}\n")
    assert error_of(load, path) == (
        "Loss.Train: expected a list of {loss name: {arguments}}, got dict "
        f"{{'CELoss': {{'weight': 1}}}} (from {path})")
    path = write(tmp_path, "y.yaml", MINIMAL, "Loss:\n  Train: [{CELoss: null, ViTCELoss: null}]\n")
    assert error_of(load, path) == (
        "Loss.Train.0: expected a one-key mapping {loss name: {arguments}}, got dict "
        f"{{'CELoss': None, 'ViTCELoss': None}} (from {path})")


def test_grad_clip_is_validated(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Optimizer: {name: Momentum, grad_clip: null}\n")
    assert load(path).Optimizer.grad_clip is None
    o = "Optimizer.grad_clip={name: ClipGradByNorm, clip_norm: 1}"
    assert error_of(load, path, [o]) == (
        f"Optimizer.grad_clip.name: unknown grad clip 'ClipGradByNorm' (from -o {o}); "
        "did you mean 'ClipGradByGlobalNorm'?")
    o = "Optimizer.grad_clip={name: ClipGradByGlobalNorm}"
    assert error_of(load, path, [o]) == (
        f"Optimizer.grad_clip: missing key 'clip_norm' (float > 0) (from -o {o})")
    o = "Optimizer.grad_clip.clip_norm=big"
    assert error_of(load, path, [o, "Optimizer.grad_clip.name=ClipGradByGlobalNorm"]) == (
        f"Optimizer.grad_clip.clip_norm: expected float > 0, got str 'big' (from -o {o})")
    o = "Optimizer.grad_clip.clip_nrom=1"
    assert error_of(load, path, ["Optimizer.grad_clip.name=ClipGradByGlobalNorm", o]) == (
        f"unknown key 'Optimizer.grad_clip.clip_nrom' (from -o {o}); "
        "did you mean 'Optimizer.grad_clip.clip_norm'?")


def test_dataloader_sections(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, """
        DataLoader:
          Train:
            dataset:
              name: ImageNetDataset
              image_root: ./data
              cls_label_path: ./data/train.txt
              transform_ops:
                - DecodeImage: {to_rgb: True}
                - RandCropImage: {size: 224, scale: [0.05, 1]}
                - RandFlipImage: {flip_code: 1}
                - NormalizeImage:
                    {scale: 1.0/255.0, mean: [0.5, 0.5, 0.5], std: [1, 1, 1], order: ''}
                - ToCHWImage:
              batch_transform_ops:
                - Mixup: {alpha: 1}
            sampler: {name: DistributedBatchSampler, batch_size: 8, drop_last: True}
            loader: {num_workers: 2}
    """)
    cfg = load(path)
    train = cfg.DataLoader.Train
    ops = train.dataset.transform_ops
    assert ops[1].RandCropImage.scale == [0.05, 1]   # unannotated tuple default: list accepted
    assert ops[3].NormalizeImage.scale == 1.0 / 255.0 and ops[3].NormalizeImage.std == [1.0] * 3
    assert ops[4] == {"ToCHWImage": None}
    assert train.dataset.batch_transform_ops == [{"Mixup": {"alpha": 1.0}}]
    assert train.loader == {"num_workers": 2, "use_shared_memory": True}
    base = "DataLoader.Train.dataset.transform_ops"
    assert error_of(load, path, [f"{base}.2.RandFlipImage.flip_code=h"]) == (
        f"{base}.2.RandFlipImage.flip_code: expected int, got str 'h' "
        f"(from -o {base}.2.RandFlipImage.flip_code=h)")
    assert error_of(load, path, [f"{base}.4={{ToCHW: null}}"]) == (
        f"{base}.4: unknown transform 'ToCHW' (from -o {base}.4={{ToCHW: null}}); "
        "did you mean 'ToCHWImage'?")
    assert error_of(load, path, ["DataLoader.Train.dataset.batch_transform_ops.0.Mixup.beta=1"]) \
        .startswith("unknown key 'DataLoader.Train.dataset.batch_transform_ops.0.Mixup.beta'")
    assert error_of(load, path, ["DataLoader.Train.sampler.batchsize=8"]).endswith(
        "did you mean 'DataLoader.Train.sampler.batch_size'?")
    assert error_of(load, path, ["DataLoader.Train.loader.workers=8"]) == (
        "unknown key 'DataLoader.Train.loader.workers' (from -o DataLoader.Train.loader.workers=8);"
        " did you mean 'DataLoader.Train.loader.num_workers'?")
    assert error_of(load, path, ["DataLoader.Train.laoder.num_workers=8"]).endswith(
        "did you mean 'DataLoader.Train.loader'?")
    assert error_of(load, path, ["DataLoader.Test.dataset.name=CIFAR10"]).startswith(
        "unknown key 'DataLoader.Test' (from -o DataLoader.Test.dataset.name=CIFAR10); ")
    nosampler = write(tmp_path, "n.yaml", MINIMAL, """
        DataLoader:
          Eval:
            dataset: {name: CIFAR10, data_file: a}
    """)
    assert error_of(load, nosampler) == f"DataLoader.Eval: missing key 'sampler' (from {nosampler})"


def test_validation_does_not_touch_the_input_and_keeps_sources(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Global: {epochs: 2}\n")
    raw = load(path, validate=False)
    assert "FP16" not in raw and raw.Global == {"epochs": 2}
    cfg = validate_config(raw, REGS)
    assert "FP16" not in raw and cfg.FP16.level == "O0"
    assert source_of(cfg, "Global.epochs") == os.path.normpath(path)


def test_apply_overrides_on_a_loaded_config(tmp_path):
    cfg = load(write(tmp_path, "x.yaml", MINIMAL))
    apply_overrides(cfg, ["Global.epochs=4"])
    assert cfg.Global.epochs == 4 and source_of(cfg, "Global.epochs") == "-o Global.epochs=4"


def test_component_with_kwargs_and_string_annotations():
    regs = dict(REGS)
    regs["MODELS"] = Registry("model")

    @regs["MODELS"].register()
    def Free(**kwargs):
        pass

    ns = {}
    exec("def Stringly(class_num: 'int' = 3, drop: 'Optional[float]' = None):\n    pass",
         {"Optional": Optional}, ns)
    regs["MODELS"].register()(ns["Stringly"])
    cfg = validate_config(AttrDict(Model={"name": "Free", "anything": [1]}), regs)
    assert cfg.Model == {"name": "Free", "anything": [1]}
    cfg = validate_config(AttrDict(Model={"name": "Stringly", "class_num": 4, "drop": 1}), regs)
    assert cfg.Model.drop == 1.0 and type(cfg.Model.drop) is float
    with pytest.raises(ConfigError, match=r"^Model.class_num: expected int, got str 'x'$"):
        validate_config(AttrDict(Model={"name": "Stringly", "class_num": "x"}), regs)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_validate(path):
    from plsc.config import get_config  # the real registries: every shipped component exists

    cfg = get_config(path)
    assert cfg.Model.name.startswith(("ViT_", "DeiT_"))
    assert isinstance(cfg.LRScheduler.learning_rate, float)
    for split in ("Train", "Eval"):
        ops = cfg.DataLoader[split].dataset.transform_ops
        assert ops[-1] == {"ToCHWImage": None}
    assert yaml_roundtrip(cfg) == cfg


def test_real_vit_model_validates():
    try:  # registers into the global MODELS
        import plsc.models  # noqa: F401
        import plsc.models.vit  # noqa: F401
    except Exception as e:  # the models helper may not have landed yet
        pytest.skip(f"plsc.models does not import: {e}")
    from plsc.registry import MODELS

    regs = dict(REGS, MODELS=MODELS)
    cfg = validate_config(AttrDict(Model={"name": "ViT_base_patch16_224", "class_num": 10,
                                          "drop_rate": 0}), regs)
    assert cfg.Model.class_num == 10 and type(cfg.Model.drop_rate) is float
    with pytest.raises(ConfigError, match=r"^Model.class_num: expected int >= 0, got str 'ten'"):
        validate_config(AttrDict(Model={"name": "ViT_base_patch16_224", "class_num": "ten"}), regs)
    with pytest.raises(ConfigError, match=r"did you mean 'Model.drop_rate'\?$"):
        validate_config(AttrDict(Model={"name": "ViT_base_patch16_224", "drop_rat": 0.1}), regs)


# ----------------------------------------------------------------------------- dump

def yaml_roundtrip(cfg):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(dump_config(cfg))
    try:
        return load_yaml(f.name)
    finally:
        os.unlink(f.name)


def test_dump_keeps_order_lists_tuples_and_string_types():
    cfg = AttrDict(Zeta={"b": 1, "a": (0.9, 0.999)}, Alpha={"s": "3e-3", "t": "(1, 2)",
                                                            "u": "id", "v": None, "w": "True",
                                                            "ops": [{"ToCHWImage": None}]})
    text = dump_config(cfg)
    assert text.index("Zeta:") < text.index("Alpha:") and text.index(" b:") < text.index(" a:")
    assert "a: [0.9, 0.999]" in text
    back = load_yaml_text(text)
    assert back == {"Zeta": {"b": 1, "a": [0.9, 0.999]},
                    "Alpha": {"s": "3e-3", "t": "(1, 2)", "u": "id", "v": None, "w": "True",
                              "ops": [{"ToCHWImage": None}]}}


def load_yaml_text(text):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_yaml(f.name)
    finally:
        os.unlink(f.name)


# ----------------------------------------------------------------------------- CLI plumbing

def test_parser_accepts_plsc_style_overrides():
    parser = common.build_parser("test")
    args = parser.parse_args(["-c", "x.yaml", "-o", "A=1", "B.c=2", "-o", "D=3", "--debug"])
    assert args.config == "x.yaml" and args.override == ["A=1", "B.c=2", "D=3"]
    assert args.debug and not args.print_config
    args = parser.parse_args(["--config", "x.yaml", "--override", "A=1", "--print-config"])
    assert args.override == ["A=1"] and args.print_config
    assert common.build_parser("t", config_required=False).parse_args([]).config is None


def test_parser_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        common.build_parser("test").parse_args(["-o", "A=1"])    # -c missing
    assert e.value.code == 2
    assert "-c/--config" in capsys.readouterr().err


def test_config_from_args_and_print_config(tmp_path, capsys):
    path = write(tmp_path, "x.yaml", MINIMAL)
    parser = common.build_parser("test")
    cfg = common.config_from_args(parser.parse_args(["-c", path, "-o", "Global.epochs=3"]), REGS)
    assert cfg.Global.epochs == 3
    with pytest.raises(SystemExit) as e:
        common.config_from_args(parser.parse_args(["-c", path, "-o", "Global.seed=5",
                                                   "--print-config"]), REGS)
    assert e.value.code == 0
    printed = load_yaml_text(capsys.readouterr().out)
    assert printed["Global"]["seed"] == 5 and printed["Model"]["class_num"] == 10
    assert printed["FP16"]["level"] == "O0"      # defaults are shown
    no_config = common.build_parser("t", config_required=False)
    assert common.config_from_args(no_config.parse_args([])) is None
    with pytest.raises(ConfigError, match="^-o overrides need a config file: add -c CONFIG$"):
        common.config_from_args(no_config.parse_args(["-o", "A=1"]))


@pytest.mark.parametrize("exc, code", [(ConfigError("bad key"), 2), (DataError("bad key"), 2),
                                       (TrainingError("bad key"), 3)])
def test_run_turns_user_errors_into_one_line_and_exit_code(exc, code, capsys):
    def main():
        raise exc

    with pytest.raises(SystemExit) as e:
        common.run(main, argv=["tool"])
    assert e.value.code == code
    captured = capsys.readouterr()
    assert captured.err == "error: bad key\n" and captured.out == ""


def test_run_debug_reraises_and_bugs_keep_their_traceback():
    def main():
        raise ConfigError("bad key")

    with pytest.raises(ConfigError):
        common.run(main, argv=["tool", "--debug"])

    def buggy():
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        common.run(buggy, argv=["tool"])


def test_run_keyboard_interrupt_and_return_codes(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        common.run(interrupted, argv=["tool"])
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    assert common.run(lambda: None, argv=["tool"]) is None
    with pytest.raises(SystemExit) as e:
        common.run(lambda: 4, argv=["tool"])
    assert e.value.code == 4


def test_run_reads_debug_from_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tool", "-c", "x.yaml", "--debug"])

    def main():
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        common.run(main)


def test_use_all_cores_respects_user_and_launcher(monkeypatch):
    monkeypatch.delitem(sys.modules, "paddle", raising=False)  # only the environment is set
    monkeypatch.setenv("OMP_NUM_THREADS", "1")               # what `import paddle` leaves
    monkeypatch.setattr(common, "_USER_OMP_THREADS", "3")
    assert common.use_all_cores() == 3 and os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(common, "_USER_OMP_THREADS", None)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    assert common.use_all_cores() is None and os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.delenv("PADDLE_TRAINERS_NUM")
    assert common.use_all_cores() == (os.cpu_count() or 1)
    assert os.environ["OMP_NUM_THREADS"] == str(os.cpu_count() or 1)


def test_a_number_where_a_string_is_expected_is_its_text(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL)
    assert load(path, ["Global.output_dir=123"], validate=False).Global.output_dir == 123
    cfg = load(path, ["Global.output_dir=123", "Global.checkpoint=7"])
    assert cfg.Global.output_dir == "123" and cfg.Global.checkpoint == "7"


# ----------------------------------------------------------------------------- list insert/append

LIST_CFG = """
DataLoader:
  Eval:
    dataset:
      name: ImageNetDataset
      image_root: d
      cls_label_path: d/l.txt
      transform_ops:
        - DecodeImage:
        - CenterCropImage: {size: 8}
    sampler: {name: DistributedBatchSampler, batch_size: 2}
"""


def test_override_inserts_and_appends_list_items(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, LIST_CFG)
    ops = "DataLoader.Eval.dataset.transform_ops"
    cfg = load(path, [f"{ops}.+1={{ResizeImage: {{resize_short: 36}}}}",
                      f"{ops}.+={{ToCHWImage: null}}", f"{ops}.+0={{DecodeImage: {{to_rgb: false}}}}"])
    assert cfg.DataLoader.Eval.dataset.transform_ops == [
        {"DecodeImage": {"to_rgb": False}}, {"DecodeImage": None},
        {"ResizeImage": {"resize_short": 36}}, {"CenterCropImage": {"size": 8}},
        {"ToCHWImage": None}]
    # provenance follows the items that moved
    assert source_of(cfg, ops + ".2.ResizeImage.resize_short") == (
        f"-o {ops}.+1={{ResizeImage: {{resize_short: 36}}}}")
    assert source_of(cfg, ops + ".3.CenterCropImage.size") == str(path)
    # an appended item is validated like any other
    assert error_of(load, path, [f"{ops}.+={{ResizeImag: null}}"]) == (
        f"{ops}.2: unknown transform 'ResizeImag' (from -o {ops}.+={{ResizeImag: null}}); "
        "did you mean 'ResizeImage' or 'NormalizeImage' or 'DecodeImage'?")
    # a list that does not exist yet is created
    cfg = load(path, ["Metric.Eval.+={TopkAcc: {topk: [1]}}"])
    assert cfg.Metric.Eval == [{"TopkAcc": {"topk": [1]}}]


def test_override_insert_errors_name_the_key(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, LIST_CFG)
    ops = "DataLoader.Eval.dataset.transform_ops"
    assert error_of(load, path, [f"{ops}.+3=ToCHWImage"]) == (
        f"override '{ops}.+3=ToCHWImage': '+3' is not a position in '{ops}'; expected '+' "
        "(append) or '+N' with N in 0..2")
    assert error_of(load, path, [f"{ops}.+x=ToCHWImage"]) == (
        f"override '{ops}.+x=ToCHWImage': '+x' is not a position in '{ops}'; expected '+' "
        "(append) or '+N' with N in 0..2")
    assert error_of(load, path, ["Model.+=1"]) == (
        "override 'Model.+=1': '+' adds a list item, but 'Model' is dict "
        "{'name': 'VisionTransformer', 'class_num': 10}, not a list")
    assert error_of(load, path, [f"{ops}.+.DecodeImage=null"]) == (
        f"override '{ops}.+.DecodeImage=null': '+' must be the last part of the key (give the "
        "whole item as the value)")


def test_plsc_compatibility_keys_accept_only_their_value(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL,
                 "DistributedStrategy: {data_parallel: True}\nExport: {export_type: paddle}\n")
    cfg = load(path)
    assert cfg.DistributedStrategy.data_parallel is True and cfg.Export.export_type == "paddle"
    assert error_of(load, path, ["DistributedStrategy.data_parallel=False"]) == (
        "DistributedStrategy.data_parallel: expected one of True, got bool False "
        "(from -o DistributedStrategy.data_parallel=False)")
    assert error_of(load, path, ["Export.export_type=onnx"]) == (
        "Export.export_type: expected one of paddle, got str 'onnx' "
        "(from -o Export.export_type=onnx)")


def test_schema_ranges_match_what_the_engine_accepts(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL)
    # -1 keeps every epoch_N checkpoint (engine); 0 epochs would give an empty LR schedule
    assert load(path, ["Global.max_num_latest_checkpoint=-1"]).Global.max_num_latest_checkpoint == -1
    assert error_of(load, path, ["Global.epochs=0"]) == (
        "Global.epochs: expected int >= 1, got int 0 (from -o Global.epochs=0)")


def test_accepted_keys_are_listed_once(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL, "Optimizer: {name: Momentum}\n")
    assert error_of(load, path, ["Optimizer.zzzzzz=1"]) == (
        "unknown key 'Optimizer.zzzzzz' (from -o Optimizer.zzzzzz=1); accepted keys: name, "
        "parameters, momentum, weight_decay, grad_clip")
