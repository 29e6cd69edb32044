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
all-reduce, losses are not). Paddle's public API only: the scaler is driven by unscale_ / step /
update and its scale is read from state_dict().

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
import math
from dataclasses import dataclass
from typing import Optional

import paddle

from . import distributed
from .amp import loss_scale


@dataclass(frozen=True)
class StepResult:
    status: str  # "ok" | "overflow" | "nonfinite"
    loss: float  # mean of the micro-batch losses of this step, on this rank
    lr: float  # the learning rate this step used
    grad_norm: float  # global norm of the unscaled gradients, before clipping
    scale: Optional[float] = None  # loss scale before the step (fp16 only)
    new_scale: Optional[float] = None

    @property
    def counted(self):
        return self.status != "nonfinite"


@paddle.no_grad()
def global_grad_norm(params):
    """sqrt(sum of squared gradients), accumulated in float32."""
    sq = [paddle.sum(paddle.square(p.grad.astype("float32"))) for p in params
          if p.grad is not None]
    return float(paddle.sqrt(paddle.add_n(sq)).item()) if sq else 0.0


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
        self._loss = 0.0

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
        self._loss += float(loss) / self.accum_steps
        self._micro += 1
        if self._micro < self.accum_steps:
            return None
        loss_value, self._loss, self._micro = self._loss, 0.0, 0
        return self._step(loss_value)

    def _step(self, loss_value):
        lr = self.optimizer.get_lr()
        scaler = self.precision.scaler
        scale = loss_scale(scaler)
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        # the clip leaves non-finite gradients untouched and returns their norm
        norm = self.clip(self.params) if self.clip is not None else global_grad_norm(self.params)
        bad = float(not (math.isfinite(loss_value) and math.isfinite(norm)))
        if self.world.size > 1:  # every rank must take the same decision
            bad = distributed.all_reduce_sum([bad], self.world)[0]
        if bad:
            self.optimizer.clear_grad()
            if scaler is None:
                return StepResult("nonfinite", loss_value, lr, norm)
            scaler.update()  # unscale_ saw the same inf/nan: the scale goes down
            self.lr_scheduler.step()
            return StepResult("overflow", loss_value, lr, norm, scale, loss_scale(scaler))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.lr_scheduler.step()
        return StepResult("ok", loss_value, lr, norm, scale, loss_scale(scaler))

    def scaler_state(self):
        return self.precision.state_dict()

    def load_scaler_state(self, state):
        self.precision.set_state_dict(state)
