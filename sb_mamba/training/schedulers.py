"""Per-step learning-rate schedules for the Separation brain.

Authors
-------
 * sb_mamba developers
"""

import math

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from sb_mamba.errors import UserError


@register_checkpoint_hooks
class WarmupCosine:
    """Linear warmup to ``lr``, then cosine decay to ``final_ratio * lr``.

    Called once per optimizer step (``per_step = True`` tells the
    :class:`sb_mamba.training.brain.Separation` brain so). Its step counter is
    checkpointed, so a resumed run continues the schedule.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    warmup_steps : int
        Steps of linear warmup from 0.
    total_steps : int
        Step at which the cosine reaches its floor (and stays there).
    final_ratio : float
        Floor as a fraction of ``lr``.

    Example
    -------
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = WarmupCosine(lr=1.0, warmup_steps=10, total_steps=110)
    >>> lrs = [sched(opt)[1] for _ in range(110)]
    >>> round(lrs[9], 3), round(lrs[59], 3), round(lrs[-1], 3)
    (1.0, 0.505, 0.01)
    """

    per_step = True

    def __init__(self, lr, warmup_steps=1000, total_steps=100000, final_ratio=0.01):
        self.lr, self.warmup, self.total = lr, warmup_steps, total_steps
        self.final_ratio = final_ratio
        self.n_steps = 0

    def lr_at(self, step):
        """Learning rate after ``step`` optimizer steps (1-based)."""
        if step <= self.warmup:
            return self.lr * step / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        floor = self.final_ratio * self.lr
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, opt):
        """Advance one step and set the optimizer's LR; returns (old, new)."""
        old = opt.param_groups[0]["lr"]
        self.n_steps += 1
        new = self.lr_at(self.n_steps)
        for group in opt.param_groups:
            group["lr"] = new
        return old, new

    @mark_as_saver
    def _save(self, path):
        torch.save({"n_steps": self.n_steps}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        self.n_steps = torch.load(path, weights_only=True)["n_steps"]


SCHEDULES = ("warmup_cosine", "plateau")


def build_scheduler(
    kind,
    lr,
    warmup_steps=0,
    total_steps=100000,
    final_ratio=0.01,
    factor=0.5,
    patience=2,
    dont_halve_until_epoch=3,
):
    """The learning-rate schedule a recipe names with one key (``lr_schedule``).

    Arguments
    ---------
    kind : str
        ``"warmup_cosine"`` (:class:`WarmupCosine`, per optimizer step),
        ``"plateau"`` (SpeechBrain's ``ReduceLROnPlateau`` on the validation
        loss, per epoch).
    lr : float
        Peak learning rate (``warmup_cosine``).
    warmup_steps, total_steps, final_ratio
        See :class:`WarmupCosine`.
    factor, patience, dont_halve_until_epoch
        See ``speechbrain.nnet.schedulers.ReduceLROnPlateau``.

    Returns
    -------
    WarmupCosine or ReduceLROnPlateau
        The scheduler.

    Example
    -------
    >>> type(build_scheduler("warmup_cosine", 1e-3, 10, 100)).__name__
    'WarmupCosine'
    >>> type(build_scheduler("plateau", 1e-3)).__name__
    'ReduceLROnPlateau'
    """
    if kind == "warmup_cosine":
        return WarmupCosine(lr, warmup_steps, total_steps, final_ratio)
    if kind == "plateau":
        from speechbrain.nnet.schedulers import ReduceLROnPlateau

        return ReduceLROnPlateau(
            factor=factor, patience=patience, dont_halve_until_epoch=dont_halve_until_epoch
        )
    raise UserError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}.")
