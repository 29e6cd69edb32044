"""Optimizers for the `Optimizer` config section: AdamW and Momentum, with a weight-decay
exemption chosen by STRUCTURED parameter name, and global-norm clipping built separately.

Weight-decay exemption: `no_weight_decay_name` is a space-separated list of regular expressions;
a parameter whose structured name (`model.named_parameters()`, e.g. `blocks.0.attn.qkv.bias`)
matches any of them (`re.search`) gets no weight decay. A YAML LIST (PLSC's DeiT form,
`["cls_token", "pos_embed", "norm", "bias"]`) holds plain substrings, matched as PLSC does
(`s in name`), never as regular expressions. Nothing else is exempted automatically
(not even 1-D parameters): the patterns are the whole rule, so users control it.
`no_weight_decay_name: null` (or "") decays every parameter. Without the key, the model family
says: `model.no_weight_decay()` (for a ViT every bias, every LayerNorm/GroupNorm parameter,
`pos_embed` and `cls_token`).

All trainable parameters go to the paddle optimizer as ONE list (the exemption is applied per
parameter inside the update), because paddle's sharding optimizer rejects parameter groups.

`layer_decay` (PaddleClas: `layerwise_decay`) scales each parameter's lr by its layer, see
plsc/optim/layer_decay.py. AdamW's epsilon is `epsilon` or PLSC's `eps` (not both).

The registered factories `AdamW` / `Momentum` take the validated config keys; the engine's
runtime objects (`model`, `learning_rate` = the LRScheduler, `multi_precision`) are declared
`runtime=` at registration, so they are never config keys.
"""
import re
from typing import Annotated, List, Optional, Tuple, Union

import paddle

from ..config import Rule, between, ge, gt
from ..errors import ConfigError
from ..registry import OPTIMIZERS
from .clip import build_grad_clip
from .fused_adamw import FusedAdamW
from .layer_decay import apply_layer_decay

# For a model that does not say (a user's own paddle Layer): the usual ViT-style names.
GENERIC_NO_WEIGHT_DECAY_NAME = "bias norm gn pos_embed cls_token"
RUNTIME_ARGS = ("model", "learning_rate", "multi_precision")
# The default of `no_weight_decay_name`: "ask the model" (null already means "decay everything").
FROM_MODEL = type("FromModel", (), {"__repr__": lambda self: "<model.no_weight_decay()>"})()


def compile_patterns(no_weight_decay_name):
    """The regular expressions of a `no_weight_decay_name` string (None / "" -> none); a list
    is of substrings (PLSC's meaning), escaped into literal patterns."""
    if isinstance(no_weight_decay_name, (list, tuple)):
        return [re.compile(re.escape(s)) for s in no_weight_decay_name]
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
NoWeightDecayName = Optional[Union[
    Annotated[str, Rule("of space-separated regular expressions", _valid_patterns)],
    List[Annotated[str, Rule("(non-empty substrings)", bool)]]]]
NonNegative = Annotated[float, ge(0)]
Epsilon = Optional[Annotated[float, gt(0)]]
LayerDecay = Optional[Annotated[float, between(0, 1, lo_open=True)]]
DEFAULT_EPSILON = 1e-8


def _one_of(values, *keys):
    """A problem when more than one of the alias `keys` is set, else None."""
    given = [k for k in keys if values.get(k) is not None]
    if len(given) > 1:
        return f"{' and '.join(given)} are the same setting: give only one"
    return None


def check_momentum(values):
    return _one_of(values, "layer_decay", "layerwise_decay")


def check_adamw(values):
    return _one_of(values, "epsilon", "eps") or check_momentum(values)


def _trainable(model, no_weight_decay_name, layer_decay, layerwise_decay):
    """split_decay, after giving each trainable parameter its layer-decay lr scale."""
    decay, no_decay = split_decay(model, no_weight_decay_name)
    ld = layer_decay if layer_decay is not None else layerwise_decay
    apply_layer_decay(model, decay + no_decay, ld)
    return decay, no_decay


@OPTIMIZERS.register(runtime=RUNTIME_ARGS, check=check_adamw)
def AdamW(betas: Tuple[Beta, Beta] = (0.9, 0.999), epsilon: Epsilon = None, eps: Epsilon = None,
          weight_decay: NonNegative = 0.0, no_weight_decay_name: NoWeightDecayName = FROM_MODEL,
          grad_clip: Optional[dict] = None, use_master_param: Optional[bool] = None,
          exp_avg_force_fp32: Optional[bool] = None, layer_decay: LayerDecay = None,
          layerwise_decay: LayerDecay = None, use_multi_tensor: bool = False, *, model,
          learning_rate, multi_precision=False):
    """paddle.optimizer.AdamW: decoupled decay p -= lr * weight_decay * p on non-exempt params,
    bias-corrected Adam update on all.

    `grad_clip` is built by `build_optimizer` (one global norm), never given to paddle.
    `use_master_param` / `exp_avg_force_fp32` appear in PLSC's published configs and are
    accepted for compatibility only: fp32 master weights and fp32 moments follow
    `multi_precision`, which the engine turns on for AMP O2 (PLSC's O2 without master weights
    is a defect we do not reproduce).

    `use_multi_tensor: true` updates the parameters with Paddle's multi-tensor AdamW kernel,
    one call per group of parameters sharing lr scale and decay (plsc/optim/fused_adamw.py):
    the same update (bitwise on CPU, measured), fewer kernel launches. Off by default: on GPU it
    is unverified, and on CPU it brings no speed. Refused with AMP O2 (`multi_precision`): its
    fp16/bf16 master-weight path cannot be checked on CPU (no such CPU kernel).
    """
    del grad_clip, use_master_param, exp_avg_force_fp32
    if use_multi_tensor and multi_precision:  # fp16/bf16 kernels exist on GPU only: unverified
        raise ConfigError("Optimizer.use_multi_tensor: true is not supported with FP16.level O2 "
                          "(fp32 master weights); set use_multi_tensor: false")
    beta1, beta2 = betas
    epsilon = next((e for e in (epsilon, eps) if e is not None), DEFAULT_EPSILON)
    decay, no_decay = _trainable(model, no_weight_decay_name, layer_decay, layerwise_decay)
    exempt = {p.name for _, p in no_decay}  # paddle calls the rule with the unique param.name
    adamw = FusedAdamW if use_multi_tensor else paddle.optimizer.AdamW
    return adamw(
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


@OPTIMIZERS.register(runtime=RUNTIME_ARGS, check=check_momentum)
def Momentum(momentum: Beta = 0.9, weight_decay: NonNegative = 0.0,
             no_weight_decay_name: NoWeightDecayName = FROM_MODEL,
             use_nesterov: bool = False, grad_clip: Optional[dict] = None,
             use_master_param: Optional[bool] = None, layer_decay: LayerDecay = None,
             layerwise_decay: LayerDecay = None, *, model, learning_rate,
             multi_precision=False):
    """SGD with momentum and L2 weight decay (added to the gradient, PLSC's Momentum semantics)
    on the non-exempt parameters. `grad_clip` / `use_master_param`: as for AdamW."""
    del grad_clip, use_master_param
    decay, no_decay = _trainable(model, no_weight_decay_name, layer_decay, layerwise_decay)
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
