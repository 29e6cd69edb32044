"""Optimizers for the `Optimizer` config section: AdamW and Momentum, with a weight-decay
exemption chosen by STRUCTURED parameter name, and global-norm clipping built separately.

Weight-decay exemption: `no_weight_decay_name` is a space-separated list of regular expressions;
a parameter whose structured name (`model.named_parameters()`, e.g. `blocks.0.attn.qkv.bias`)
matches any of them (`re.search`) gets no weight decay. Nothing else is exempted automatically
(not even 1-D parameters): the patterns are the whole rule, so users control it.
`no_weight_decay_name: null` (or "") decays every parameter. Without the key, the model family
says: `model.no_weight_decay()` (for a ViT every bias, every LayerNorm/GroupNorm parameter,
`pos_embed` and `cls_token`).

All trainable parameters go to the paddle optimizer as ONE list (the exemption is applied per
parameter inside the update), because paddle's sharding optimizer rejects parameter groups.

The registered factories `AdamW` / `Momentum` take the validated config keys; the engine's
runtime objects (`model`, `learning_rate` = the LRScheduler, `multi_precision`) are declared
`runtime=` at registration, so they are never config keys.
"""
import re
from typing import Annotated, Optional, Tuple

import paddle

from ..config import Rule, between, ge, gt
from ..errors import ConfigError
from ..registry import OPTIMIZERS
from .clip import build_grad_clip

# For a model that does not say (a user's own paddle Layer): the usual ViT-style names.
GENERIC_NO_WEIGHT_DECAY_NAME = "bias norm gn pos_embed cls_token"
RUNTIME_ARGS = ("model", "learning_rate", "multi_precision")
# The default of `no_weight_decay_name`: "ask the model" (null already means "decay everything").
FROM_MODEL = type("FromModel", (), {"__repr__": lambda self: "<model.no_weight_decay()>"})()


def compile_patterns(no_weight_decay_name):
    """The regular expressions of a `no_weight_decay_name` string (None / "" -> none)."""
    patterns = []
    for token in (no_weight_decay_name or "").split():
        try:
            patterns.append(re.compile(token))
        except re.error as e:
            raise ConfigError(f"Optimizer.no_weight_decay_name: {token!r} is not a valid "
                              f"regular expression ({e})") from None
    return patterns


def _valid_patterns(text):
    try:
        compile_patterns(text)
    except ConfigError:
        return False
    return True


def exempt_names(model, no_weight_decay_name=FROM_MODEL):
    """Structured names of the parameters that get no weight decay."""
    if no_weight_decay_name is FROM_MODEL:
        if hasattr(model, "no_weight_decay"):  # plsc's model families own their no-decay set
            return set(model.no_weight_decay())
        no_weight_decay_name = GENERIC_NO_WEIGHT_DECAY_NAME  # any other paddle Layer
    patterns = compile_patterns(no_weight_decay_name)
    return {n for n, _ in model.named_parameters() if any(r.search(n) for r in patterns)}


def split_decay(model, no_weight_decay_name=FROM_MODEL):
    """([(name, param)] with decay, [(name, param)] without) over the TRAINABLE parameters."""
    exempt = exempt_names(model, no_weight_decay_name)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.stop_gradient:  # frozen: not optimized at all
            continue
        (no_decay if name in exempt else decay).append((name, p))
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters to optimize")
    return decay, no_decay


Beta = Annotated[float, between(0, 1, hi_open=True)]
NoWeightDecayName = Optional[Annotated[str, Rule("of space-separated regular expressions",
                                                 _valid_patterns)]]
NonNegative = Annotated[float, ge(0)]


@OPTIMIZERS.register(runtime=RUNTIME_ARGS)
def AdamW(betas: Tuple[Beta, Beta] = (0.9, 0.999), epsilon: Annotated[float, gt(0)] = 1e-8,
          weight_decay: NonNegative = 0.0, no_weight_decay_name: NoWeightDecayName = FROM_MODEL,
          grad_clip: Optional[dict] = None, use_master_param: Optional[bool] = None,
          exp_avg_force_fp32: Optional[bool] = None, *, model, learning_rate,
          multi_precision=False):
    """paddle.optimizer.AdamW: decoupled decay p -= lr * weight_decay * p on non-exempt params,
    bias-corrected Adam update on all.

    `grad_clip` is built by `build_optimizer` (one global norm), never given to paddle.
    `use_master_param` / `exp_avg_force_fp32` appear in PLSC's published configs and are
    accepted for compatibility only: fp32 master weights and fp32 moments follow
    `multi_precision`, which the engine turns on for AMP O2 (PLSC's O2 without master weights
    is a defect we do not reproduce).
    """
    del grad_clip, use_master_param, exp_avg_force_fp32
    beta1, beta2 = betas
    decay, no_decay = split_decay(model, no_weight_decay_name)
    exempt = {p.name for _, p in no_decay}  # paddle calls the rule with the unique param.name
    return paddle.optimizer.AdamW(
        learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
        parameters=[p for _, p in decay + no_decay], weight_decay=weight_decay,
        apply_decay_param_fun=lambda param_name: param_name not in exempt,
        multi_precision=multi_precision)


class MomentumL2(paddle.optimizer.Momentum):
    """paddle Momentum whose fused L2 decay skips the parameters named in `no_decay` (their
    unique `param.name`s). Same update as paddle's: with g' = g + weight_decay * p (decayed
    params only), v = momentum * v + g'; p -= lr * v (or lr * (g' + momentum * v) if Nesterov).
    """

    def __init__(self, *args, no_decay=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._no_decay = frozenset(no_decay)

    def _append_optimize_op(self, block, param_and_grad):
        pair = param_and_grad["params"] if isinstance(param_and_grad, dict) else param_and_grad
        param = pair[0]
        if getattr(param, "name", None) not in self._no_decay:
            return super()._append_optimize_op(block, param_and_grad)
        saved = self._regularization_method, self._regularization_coeff
        self._regularization_method, self._regularization_coeff = "", 0.0
        try:
            return super()._append_optimize_op(block, param_and_grad)
        finally:
            self._regularization_method, self._regularization_coeff = saved


@OPTIMIZERS.register(runtime=RUNTIME_ARGS)
def Momentum(momentum: Beta = 0.9, weight_decay: NonNegative = 0.0,
             no_weight_decay_name: NoWeightDecayName = FROM_MODEL,
             use_nesterov: bool = False, grad_clip: Optional[dict] = None,
             use_master_param: Optional[bool] = None, *, model, learning_rate,
             multi_precision=False):
    """SGD with momentum and L2 weight decay (added to the gradient, PLSC's Momentum semantics)
    on the non-exempt parameters. `grad_clip` / `use_master_param`: as for AdamW."""
    del grad_clip, use_master_param
    decay, no_decay = split_decay(model, no_weight_decay_name)
    return MomentumL2(
        learning_rate=learning_rate, momentum=momentum,
        parameters=[p for _, p in decay + no_decay], use_nesterov=use_nesterov,
        weight_decay=weight_decay, multi_precision=multi_precision,
        no_decay={p.name for _, p in no_decay})


def build_optimizer(opt_cfg: dict, lr_scheduler, model, multi_precision: bool = False):
    """(optimizer, grad_clip) for the `Optimizer` config section.

    grad_clip is None or `clip(params) -> total_norm`; the engine calls it on the unscaled grads
    of all parameters before `optimizer.step()`, then steps `lr_scheduler` itself.
    """
    optimizer = OPTIMIZERS.build(opt_cfg, section="Optimizer", model=model,
                                 learning_rate=lr_scheduler,
                                 multi_precision=bool(multi_precision))
    return optimizer, build_grad_clip(opt_cfg.get("grad_clip"))
