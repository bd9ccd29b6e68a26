"""Weight averaging: an exponential moving average (EMA) of a separator's weights.

With a constant or slowly decaying learning rate, the weights of a small
separator wander around a good point from step to step, and so does its
validation score. An exponential moving average of the weights, updated
after every optimizer step, sits nearer that point. The recipes' YAML key
``ema_decay`` (e.g. ``0.999``: an average over about the last 1000 steps;
``null``: off) switches it on in :class:`sb_mamba.training.brain.Separation`:
validation, the test and the checkpoint ranking then use the averaged
weights, the validation log also gives the score of the weights as trained
(``si-snri-raw``), and ``sb-mamba export`` writes the averaged weights. The
average is PyTorch's :class:`torch.optim.swa_utils.AveragedModel`; it is a
checkpoint recoverable of its own (:data:`AVERAGE_KEY`), optional, so that
a run checkpointed before it was switched on resumes (its average starts
from the weights of the first step after).
:func:`sb_mamba.modelfolder.read_checkpoint_weights` reads it back.

Authors
-------
 * sb_mamba developers
"""

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sb_mamba.errors import UserError
from sb_mamba.modelfolder import AVERAGE_KEY

__all__ = ["AVERAGE_KEY", "is_started", "weight_average"]


def weight_average(module, decay):
    """An EMA of ``module``'s parameters, in eval mode, not yet started.

    Its first :meth:`~torch.optim.swa_utils.AveragedModel.update_parameters`
    copies the weights; each later one moves the average towards them by
    ``1 - decay``. Buffers are copied when it is made (the separators' buffers
    are constants) and not averaged.

    Arguments
    ---------
    module : torch.nn.Module
        The separator (not a DDP wrapper).
    decay : float
        In (0, 1): the weight kept from the average at each step.

    Returns
    -------
    torch.optim.swa_utils.AveragedModel

    Example
    -------
    >>> import torch
    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> avg = weight_average(net, 0.9)
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(1.0)
    ...     avg.update_parameters(net)  # the first update copies
    ...     _ = net.weight.fill_(2.0)
    ...     avg.update_parameters(net)  # 0.9 * 1 + 0.1 * 2
    >>> avg.module.weight
    Parameter containing:
    tensor([[1.1000, 1.1000]])
    >>> sorted(avg.state_dict())
    ['module.weight', 'n_averaged']
    """
    try:
        decay = float(decay)
    except (TypeError, ValueError):
        decay = -1.0
    if not 0.0 < decay < 1.0:
        raise UserError(
            f"ema_decay must be a number between 0 and 1 (e.g. 0.999: an average "
            f"over about the last 1000 steps) or null to train without weight "
            f"averaging; got {decay!r}."
        )
    avg = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    return avg.eval().requires_grad_(False)


def is_started(avg):
    """Whether ``avg`` (an :func:`weight_average`, or None) holds an average yet."""
    return avg is not None and int(avg.n_averaged) > 0
