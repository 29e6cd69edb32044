"""AdamW updated by Paddle's multi-tensor kernel (`Optimizer.use_multi_tensor: true`).

Paddle 3.3's `paddle.optimizer.AdamW` has no `use_multi_tensor` (its base class fuses only
classes named Momentum and Adam, and Adam's weight decay is L2 in the gradient, a different
update). It does ship the multi-tensor AdamW kernel, `_C_ops.fused_adam_` (use_adamw=True), which
runs on CPU and GPU. FusedAdamW is paddle's AdamW with its per-parameter `adamw_` calls gathered
and sent as ONE `fused_adam_` call per group of parameters that share everything the kernel
takes once: learning rate (the layer-decay scale, `optimize_attr['learning_rate']`), weight
decay (exempt or not), dtype and master weight. A ViT-B with layer decay is ~28 calls, not ~150.

Everything else is paddle's AdamW unchanged: the accumulators (moments, beta powers, master
weights) are created and named by it, so state_dict, checkpoints, resume, EMA and the ZeRO
stage-1 sharding optimizer (which calls `_apply_optimize` with this rank's parameters) see the
same state. Measured on CPU: bitwise the same weights and state as AdamW over several steps
(tests/test_multi_tensor_adamw.py). GPU: the same kernel API, unverified here.
"""
import paddle
from paddle import _C_ops


class FusedAdamW(paddle.optimizer.AdamW):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending = []  # (param, grad) pairs of the update being built

    def _append_optimize_op(self, block, param_and_grad):
        if not paddle.in_dynamic_mode() or isinstance(param_and_grad, dict):
            return super()._append_optimize_op(block, param_and_grad)
        self._pending.append(param_and_grad)  # applied by _finish_update, grouped
        return None

    def _group_key(self, param):
        attr = getattr(param, "optimize_attr", None) or {}
        decay = self._apply_decay_param_fun is None or self._apply_decay_param_fun(param.name)
        master = self._multi_precision and self._is_dtype_fp16_or_bf16(param.dtype)
        return float(attr.get("learning_rate", 1.0)), bool(decay), master, str(param.dtype)

    def _finish_update(self, block, parameters_and_grads):
        pending, self._pending = self._pending, []
        groups = {}
        for pair in pending:
            groups.setdefault(self._group_key(pair[0]), []).append(pair)
        for (_, decay, master, _), pairs in groups.items():
            self._fused_update(pairs, decay, master)
        return super()._finish_update(block, parameters_and_grads)

    def _fused_update(self, pairs, decay, master):
        params = [p for p, _ in pairs]
        acc = {name: [self._get_accumulator_master(name, p) for p in params]
               for name in (self._moment1_acc_str, self._moment2_acc_str,
                            self._beta1_pow_acc_str, self._beta2_pow_acc_str)}
        masters = [self._master_weights[p.name] for p in params] if master else None
        lr = self._create_param_lr(pairs[0])  # the same for the whole group
        _C_ops.fused_adam_(
            params, [g for _, g in pairs], lr, acc[self._moment1_acc_str],
            acc[self._moment2_acc_str], None, acc[self._beta1_pow_acc_str],
            acc[self._beta2_pow_acc_str], masters, None, self._beta1, self._beta2,
            self._epsilon, -1, self._weight_decay if decay else 0.0, True, master, False,
            False)
