"""The Separation brain's epochs: the short-to-long ``segment_curriculum``, and
the CPU time of an epoch that a kill interrupted.

Authors
-------
 * sb_mamba developers
"""

import time

import pytest
import speechbrain as sb
import torch

from sb_mamba.errors import UserError
from sb_mamba.metrics import pit_si_snr_loss
from sb_mamba.training.brain import Separation
from sb_mamba.training.checkpoints import KillSafeCheckpointer


class LengthRecorder(torch.nn.Module):
    """A separator that remembers the lengths it saw: mix [B, T] -> [B, T, 2]."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(2))
        self.lengths = []

    def forward(self, mix):
        self.lengths.append(mix.shape[1])
        return mix.unsqueeze(-1) * self.gain


def brain(curriculum, checkpointer=None, **extra):
    hparams = dict(
        num_spks=2, sample_rate=100, loss=pit_si_snr_loss, segment_curriculum=curriculum, **extra
    )
    return Separation(
        modules={"separator": LengthRecorder()},
        hparams=hparams,
        opt_class=lambda p: torch.optim.SGD(p, lr=0.0),
        run_opts={"device": "cpu"},
        checkpointer=checkpointer,
    )


def train_lengths(b, epoch, T=200):
    b.on_stage_start(sb.Stage.TRAIN, epoch)
    targets = torch.randn(3, T, 2)
    b.compute_forward(targets.sum(-1), targets, sb.Stage.TRAIN)
    return b.modules.separator.lengths[-1]


def test_crops_grow_with_the_epochs_and_never_exceed_the_mixture():
    b = brain([[3, 1.0], [1, 0.5], [6, 5.0]])  # any order; 100 Hz: 50, 100, 500 samples
    assert [train_lengths(b, e) for e in (1, 2, 3, 5, 6, 9)] == [50, 50, 100, 100, 200, 200]


def test_before_the_first_stage_and_without_curriculum_nothing_is_cropped():
    assert train_lengths(brain([[2, 0.5]]), 1) == 200
    assert train_lengths(brain(None), 4) == 200
    # the curriculum takes precedence over training_signal_len
    b = brain([[1, 0.3]], limit_training_signal_len=True, training_signal_len=80)
    assert train_lengths(b, 1) == 30
    assert (
        train_lengths(brain(None, limit_training_signal_len=True, training_signal_len=80), 1) == 80
    )


def test_evaluation_is_never_cropped():
    b = brain([[1, 0.5]])
    b.on_stage_start(sb.Stage.TRAIN, 1)
    targets = torch.randn(2, 200, 2)
    b.compute_forward(targets.sum(-1), targets, sb.Stage.VALID)
    assert b.modules.separator.lengths[-1] == 200


@pytest.mark.parametrize("bad", [[[0, 1.0]], [[1, 0.0]], [[1]], "fast", [["a", 1.0]]])
def test_a_wrong_curriculum_is_one_clear_error(bad):
    with pytest.raises(UserError, match=r"segment_curriculum must be a list of \[first_epoch"):
        brain(bad).on_stage_start(sb.Stage.TRAIN, 1)


def _burn_cpu(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_killed_epoch_keeps_the_cpu_time_it_spent(tmp_path):
    first = brain(None, KillSafeCheckpointer(tmp_path))
    first.on_fit_start()
    first.on_stage_start(sb.Stage.TRAIN, 1)
    _burn_cpu(0.6)
    first.step = 7  # mid-epoch
    first._save_intra_epoch_ckpt()  # ... and the process is killed here

    resumed = brain(None, KillSafeCheckpointer(tmp_path))
    resumed.on_fit_start()
    assert resumed.step == 7
    resumed.on_stage_start(sb.Stage.TRAIN, 1)
    resumed.on_stage_end(sb.Stage.TRAIN, 0.0, 1)
    minutes = resumed.train_stats["cpu-minutes"]
    assert 0.6 / 60 <= minutes < 5 / 60, minutes
    # the next epoch starts from zero again
    resumed.on_stage_start(sb.Stage.TRAIN, 2)
    resumed.on_stage_end(sb.Stage.TRAIN, 0.0, 2)
    assert resumed.train_stats["cpu-minutes"] < 0.5 / 60
