"""Schemas of the fixed sections (Global, FP16, ...) and the config's top-level layout.

Component sections (Model, Optimizer, ...) have no table here: their schema is the signature
of the registered component (see plsc/config/types.py). Types use the same annotation forms
(`Annotated[int, ge(1)]` for a range, `Literal[...]` for a choice).
"""
from typing import Annotated, Any, List, Literal, NamedTuple, Optional, Union

from .types import between, ge

PositiveInt = Annotated[int, ge(1)]
Count = Annotated[int, ge(0)]


class Field(NamedTuple):
    """One key of a fixed section: its type (annotation form) and default."""

    type: Any
    default: Any
    keys: Optional[dict] = None  # sub-schema when the value is a mapping with fixed keys


GRAD_SCALER_SCHEMA = {
    "init_loss_scaling": Field(float, 65536.0),
    "incr_ratio": Field(float, 2.0),
    "decr_ratio": Field(float, 0.5),
    "incr_every_n_steps": Field(PositiveInt, 1000),
    "decr_every_n_nan_or_inf": Field(PositiveInt, 2),
    "use_dynamic_loss_scaling": Field(bool, True),
}

# PLSC's form of DistributedStrategy.recompute (`true` is interval 1, no names): recompute
# blocks 0, K, 2K, ... (K = layerlist_interval; 0: none by interval) plus the sublayers named
# in `names` (e.g. blocks.11). The model checks the names (set_grad_checkpointing).
RECOMPUTE_SCHEMA = {
    "layerlist_interval": Field(Count, 1),
    "names": Field(List[str], []),
}

# ZeRO sharding (plsc/engine/sharding.py). stage 1: optimizer state; 2: + gradients; 3: +
# parameters (2 and 3: GPU/XPU builds only). sharding_degree: processes sharing one copy of the
# state (null = all; it must divide the world size). offload: optimizer state to host memory
# (stage 2, pure fp16).
SHARDING_SCHEMA = {
    "sharding_stage": Field(Literal[1, 2, 3], 1),
    "sharding_degree": Field(Optional[PositiveInt], None),
    "offload": Field(bool, False),
}

# Weight EMA (plsc/engine/ema.py). PLSC's keys `decay` and `thres_steps`; EMA is on when `decay`
# is set (so an absent or null section is no EMA). `ema_eval`/`eval_start_epoch`: evaluations
# during training also evaluate the EMA weights, from epoch `eval_start_epoch` on (1-based, as
# logged; 0 = from the first), like PaddleClas' Global.start_eval_epoch. `best_model`: which
# weights' top1 chooses best_model (its .pdparams holds the raw weights, its .pdema the EMA's).
EMA_SCHEMA = {
    "decay": Field(Optional[Annotated[float, between(0, 1, lo_open=True, hi_open=True)]], None),
    "thres_steps": Field(bool, True),
    "ema_eval": Field(bool, True),
    "eval_start_epoch": Field(Count, 0),
    "best_model": Field(Literal["raw", "ema"], "raw"),
}

FIXED_SECTIONS = {
    "Global": {
        "checkpoint": Field(Optional[str], None),
        "pretrained_model": Field(Optional[str], None),
        "finetune": Field(bool, False),
        "pos_embed_interp": Field(Literal["bilinear", "bicubic"], "bilinear"),
        "output_dir": Field(str, "./output/"),
        "device": Field(Literal["gpu", "cpu", "xpu"], "gpu"),
        "save_interval": Field(PositiveInt, 1),
        "max_num_latest_checkpoint": Field(Annotated[int, ge(-1)], 0),
        "eval_during_train": Field(bool, True),
        # paddle.jit.to_static the model's forward (training and evaluation), as PaddleClas'
        # Global.to_static; plsc/engine/build.py to_static_model.
        "to_static": Field(bool, False),
        "eval_interval": Field(PositiveInt, 1),
        "eval_unit": Field(Literal["epoch", "step"], "epoch"),
        "accum_steps": Field(PositiveInt, 1),
        # The LR schedule spans epochs * steps_per_epoch optimizer steps: at least one epoch.
        "epochs": Field(PositiveInt, 1),
        "max_train_step": Field(Optional[PositiveInt], None),
        "print_batch_step": Field(PositiveInt, 10),
        "use_visualdl": Field(bool, False),
        "seed": Field(Optional[int], None),
        "max_nan_steps": Field(PositiveInt, 3),
        "flags": Field(Optional[dict], None),
        # Output-directory policy (plsc/engine/run_dir.py): continue the run in
        # output_dir/Model.name from its `latest`, or move an earlier run aside.
        "auto_resume": Field(bool, False),
        "overwrite": Field(bool, False),
    },
    "FP16": {
        "level": Field(Literal["O0", "O1", "O2"], "O0"),
        "dtype": Field(Literal["float16", "bfloat16"], "float16"),
        "GradScaler": Field(dict, {}, keys=GRAD_SCALER_SCHEMA),
        "fp16_custom_white_list": Field(List[str], []),
        "fp16_custom_black_list": Field(List[str], []),
    },
    "DistributedStrategy": {
        # PLSC-compatibility key: PLSC's published configs say `data_parallel: True`. Data
        # parallelism is the only strategy plsc runs (always on; one process is a world of one),
        # so the key is validated to be true and changes nothing; `false` is refused instead of
        # being silently ignored.
        "data_parallel": Field(Literal[True], True),
        "recompute": Field(Union[bool, dict], False, keys=RECOMPUTE_SCHEMA),
        "sharding": Field(Optional[dict], None, keys=SHARDING_SCHEMA),
    },
    "Export": {
        # PLSC-compatibility key: `export_type: paddle` in PLSC's configs. Paddle Inference is
        # the only export format, so the key is validated to be `paddle` and changes nothing.
        "export_type": Field(Literal["paddle"], "paddle"),
        "input_shape": Field(List[Optional[int]], [None, 3, 224, 224]),
    },
    "Infer": {
        "label_file": Field(Optional[str], None),
        "topk": Field(PositiveInt, 5),
    },
    "EMA": EMA_SCHEMA,
}

LOADER_SCHEMA = {
    "num_workers": Field(Count, 0),
    "use_shared_memory": Field(bool, True),
}

TOP_LEVEL = ("Global", "FP16", "DistributedStrategy", "Model", "Loss", "Metric",
             "LRScheduler", "Optimizer", "DataLoader", "Export", "Infer", "EMA")
SPLITS = ("Train", "Eval")
