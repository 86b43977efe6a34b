"""An exponential moving average (EMA) of trained parameters: ema <- decay * ema + (1 - decay) * param.

Reward fine-tuning moves the denoiser by noisy single-batch steps; evaluating or shipping the average of the
recent weights instead of the last iterate is the usual remedy in diffusion training. The shadow copy is kept in
float32 whatever the parameters' dtype (a bf16 shadow would round away updates of size (1 - decay) * delta).

    ema = EMA(trainer.parameters, decay=0.99)   # ReFLTrainer(..., ema_decay=0.99) does this for you
    ...; optimizer.step(); ema.update()
    with ema.swapped():                         # the averaged weights in the model, the trained ones restored after
        images = trainer.sample(prompts)
    ema.copy_to()                               # or keep the averaged weights for good
"""
from __future__ import annotations

import contextlib

import torch


def check_decay(decay, name: str = "ema decay"):
    """Raise ValueError naming ``name`` unless ``decay`` is a number in [0, 1)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {decay!r}")


class EMA:
    """EMA of ``params`` (a list of tensors, updated in place by an optimizer) with ``decay`` in [0, 1).

    The shadow starts at the parameters' values when constructed (the base model, before any update)."""

    def __init__(self, params, decay: float):
        check_decay(decay)
        self.params = list(params)
        if not self.params:
            raise ValueError("EMA needs at least one parameter")
        self.decay = float(decay)
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self):
        """Move the shadow towards the current parameters (call after every optimizer step)."""
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().to(s.device, torch.float32), 1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self):
        """Write the averaged weights into the parameters (the trained ones are lost; see ``swapped``)."""
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.device, p.dtype))

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the parameters inside the block; the trained ones restored on exit."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield self
        finally:
            with torch.no_grad():
                for k, p in zip(kept, self.params):
                    p.copy_(k)
