"""One optimizer step from micro-batch losses: the only place that knows about loss scaling,
gradient accumulation, clipping and skipping non-finite steps.

    with wrapper.micro_context():            # no_sync on all but the last micro-batch
        with wrapper.autocast():
            logits = dp_model(images)
        result = wrapper.update(loss)        # None while accumulating, a StepResult after a step

A step: backward of loss / accum_steps (times the loss scale under fp16), DataParallel.no_sync
on all but the last micro-batch so gradients are all-reduced once per step; then unscale, one
global-norm clip, and an all-rank decision to skip: every rank skips when the summed loss or the
global norm of the unscaled gradients is inf/nan on any rank (gradients are identical after the
all-reduce, losses are not). The scaler is driven by unscale_ / step / update, with that
decision as its found-inf (`_scaler_step`), and its scale is read from state_dict().

Host syncs: at most ONE device-to-host read per optimizer step. The micro-batch losses are summed
on the device (float64: the same arithmetic as summing float(loss) / accum_steps in python, so
logged averages are unchanged); the global gradient norm is a device tensor and the clip scales
the gradients by min(1, clip_norm / norm) on the device. The skip flag (loss or norm not finite
on this rank) is all-reduced across ranks on the device and read once: Paddle's dygraph
optimizer cannot be skipped by a device-side conditional, so the decision needs the host. A
skipped step reads its loss once more, for its warning; an fp16 overflow reads the loss scale.
Under fp16 the flag also covers the GradScaler's found-inf (inf/nan unscaled gradients make the
norm non-finite), and the scaler is handed the host decision so that Paddle's optimizer does
not read its device found-inf again: one read per step too (GPU only, unverified here).

Under ZeRO stage 1 (sharding.py) nothing here changes: gradients are all-reduced in backward as
in plain data parallelism, so the norm, the clip and the skip decision see the full averaged
gradients on every rank, and `optimizer.step()` (Paddle's sharding optimizer) updates this
rank's shard and broadcasts the result. Under fp16 the all-reduced skip flag is also what makes
the loss scaler's found-inf agree across shards: a step runs only when no rank saw inf/nan.

Outcomes (StepResult.status):
- "ok": optimizer and scheduler stepped.
- "overflow": fp16 scaling overflowed; the scaler lowers the scale, weights stay, and the step
  counts (the scheduler steps), as usual for dynamic loss scaling.
- "nonfinite": without a scaler, nothing changes and the step does not count; the loop decides
  when too many in a row end the run.
"""
import contextlib
from dataclasses import dataclass
from typing import Optional

import paddle
import paddle.distributed as dist

from ..optim.clip import global_norm, grads_of
from . import distributed
from .amp import loss_scale


@dataclass(frozen=True)
class StepResult:
    status: str  # "ok" | "overflow" | "nonfinite"
    loss: paddle.Tensor  # 0-d float64 on the device: mean of this rank's micro-batch losses
    lr: float  # the learning rate this step used
    grad_norm: paddle.Tensor  # 0-d float32 on the device: unscaled global norm, before clipping
    scale: Optional[float] = None  # overflow steps only: the loss scale before the step
    new_scale: Optional[float] = None  # and after it

    @property
    def counted(self):
        return self.status != "nonfinite"


def global_grad_norm(params):
    """The global norm of the gradients of `params` (0-d float32 device tensor)."""
    return global_norm(grads_of(params))


def _scaler_step(scaler, optimizer, skip):
    """fp16: the GradScaler steps and updates with the all-rank decision as its found-inf.
    The decision is a host bool already, so Paddle's optimizer (which tests `if found_inf:`)
    does not read the device flag a second time, every shard agrees, and update() lowers the
    scale exactly when the step was skipped: update() alone would go by the found-inf of the
    previous step() (Paddle 3.3 keeps it in `_cache_found_inf`). `_found_inf` is private to
    Paddle 3.3's GradScaler, reset by every unscale_; GPU only, unverified here."""
    scaler._found_inf = skip
    scaler.step(optimizer)
    if not skip:
        scaler.update()
        return
    # lowering the scale, Paddle 3.3 prints float(scale) of its shape-[1] scale, which numpy 2
    # refuses (TypeError): update a 0-d view of it, then restore the shape its kernels expect
    scaler._scale = scaler._scale.reshape([])
    try:
        scaler.update()
    finally:
        scaler._scale = scaler._scale.reshape([1])


class OptimWrapper:
    def __init__(self, optimizer, lr_scheduler, precision, params, clip=None, accum_steps=1,
                 world=distributed.World(), dp_model=None):
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.precision = precision  # amp.Amp: autocast context and optional GradScaler
        self.params = list(params)
        self.clip = clip
        self.accum_steps = accum_steps
        self.world = world
        self.dp_model = dp_model
        self._micro = 0  # micro-batches accumulated towards the next step
        self._loss = None  # device sum of loss / accum_steps over this step's micro-batches

    def autocast(self):
        return self.precision.autocast()

    def micro_context(self):
        """Wraps forward AND backward: DataParallel decides at forward time whether to sync."""
        last = self._micro + 1 == self.accum_steps
        # ZeRO stage 2's model reduces each gradient to its owner in every backward (no no_sync)
        if self.world.size > 1 and not last and hasattr(self.dp_model, "no_sync"):
            return self.dp_model.no_sync()
        return contextlib.nullcontext()

    def update(self, loss):
        """Backward of one micro-batch loss; steps once accum_steps have been accumulated."""
        scaled = loss / self.accum_steps
        if self.precision.scaler is not None:
            scaled = self.precision.scaler.scale(scaled)
        scaled.backward()
        part = loss.detach().astype("float64") / self.accum_steps
        self._loss = part if self._loss is None else self._loss + part
        self._micro += 1
        if self._micro < self.accum_steps:
            return None
        loss_value, self._loss, self._micro = self._loss, None, 0
        return self._step(loss_value)

    def _skip(self, loss_value, norm):
        """Whether any rank saw a non-finite loss or norm: the step's one host read."""
        finite = paddle.logical_and(paddle.isfinite(loss_value), paddle.isfinite(norm))
        flag = paddle.logical_not(finite).astype("float32").reshape([1])
        if self.world.size > 1:  # every rank must take the same decision
            dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return bool(flag.numpy()[0] > 0)

    def _step(self, loss_value):
        lr = self.optimizer.get_lr()  # a host float kept by the LR scheduler
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        # the clip leaves non-finite gradients untouched and returns their norm
        norm = self.clip(self.params) if self.clip is not None else global_grad_norm(self.params)
        if not isinstance(norm, paddle.Tensor):  # sharding.sharded_clip (stage 2) gives a float
            norm = paddle.to_tensor(norm, dtype="float32")
        skip = self._skip(loss_value, norm)
        if skip and scaler is None:
            self.optimizer.clear_grad()
            return StepResult("nonfinite", loss_value, lr, norm)
        scale = loss_scale(scaler) if skip else None  # read only when the log will say it
        if scaler is not None:
            _scaler_step(scaler, self.optimizer, skip)
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.lr_scheduler.step()
        if skip:
            return StepResult("overflow", loss_value, lr, norm, scale, loss_scale(scaler))
        return StepResult("ok", loss_value, lr, norm)

    def scaler_state(self):
        return self.precision.state_dict()

    def load_scaler_state(self, state):
        self.precision.set_state_dict(state)
