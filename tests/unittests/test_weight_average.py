"""Weight averaging (``ema_decay``) in the Separation brain: the average's
arithmetic over real optimizer steps, evaluation with it, checkpoints that keep
it, and checkpoints written before it was switched on.

Authors
-------
 * sb_mamba developers
"""

import pytest
import speechbrain as sb
import torch

from sb_mamba.errors import UserError
from sb_mamba.metrics import pit_si_snr_loss
from sb_mamba.modelfolder import read_checkpoint_weights
from sb_mamba.training.brain import Separation
from sb_mamba.training.checkpoints import KillSafeCheckpointer


class Mixer(torch.nn.Module):
    """mix [B, T] -> [B, T, 2]: two learnt FIR filters of the mixture."""

    def __init__(self):
        super().__init__()
        self.fir = torch.nn.Conv1d(1, 2, 5, padding=2)

    def forward(self, mix):
        return self.fir(mix.unsqueeze(1)).transpose(1, 2)


class Logger:
    def __init__(self):
        self.valid = []

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None):
        self.valid.append(valid_stats)


def brain(decay, checkpointer=None, seed=0):
    torch.manual_seed(seed)
    net = Mixer()
    if checkpointer is not None:
        checkpointer.add_recoverable("separator", net)
    hparams = dict(
        num_spks=2,
        sample_rate=100,
        loss=pit_si_snr_loss,
        threshold_byloss=False,
        loss_upper_lim=1e9,
        ema_decay=decay,
        train_logger=Logger(),
    )
    b = Separation(
        modules={"separator": net},
        hparams=hparams,
        opt_class=lambda p: torch.optim.SGD(p, lr=0.05),
        run_opts={"device": "cpu"},
        checkpointer=checkpointer,
    )
    b.init_optimizers()  # as fit() does
    return b


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = torch.randn(2, 300, generator=g), torch.randn(2, 300, generator=g)
    return sb.dataio.batch.PaddedBatch(
        [
            {"id": f"m{seed}-{i}", "mix_sig": s1[i] + s2[i], "s1_sig": s1[i], "s2_sig": s2[i]}
            for i in range(2)
        ]
    )


def weights(net):
    return [p.detach().clone() for p in net.parameters()]


def test_the_average_follows_every_optimizer_step():
    b = brain(0.8)
    b.on_stage_start(sb.Stage.TRAIN, 1)
    expected = None
    for step in range(4):
        b.fit_batch(batch(step))
        now = weights(b.modules.separator)
        # the first step copies, then avg <- 0.8 avg + 0.2 w
        expected = now if expected is None else [0.8 * e + 0.2 * w for e, w in zip(expected, now)]
    assert int(b.weight_average.n_averaged) == 4
    for e, a in zip(expected, b.weight_average.module.parameters()):
        torch.testing.assert_close(a, e)
    assert not torch.allclose(expected[0], now[0])  # the weights did move away from it


def test_validation_scores_the_average_and_logs_the_weights_as_trained():
    b = brain(0.8)
    b.on_stage_start(sb.Stage.TRAIN, 1)
    for step in range(3):
        b.fit_batch(batch(step))
    b.on_stage_start(sb.Stage.VALID, 1)
    valid = batch(99)
    b.evaluate_batch(valid, sb.Stage.VALID)
    mix, targets, _ = b._signals(valid)
    with torch.no_grad():
        avg_est = b.weight_average.module(mix)
        raw_est = b.modules.separator(mix)
    base = pit_si_snr_loss(targets, mix.unsqueeze(-1).expand_as(targets))
    torch.testing.assert_close(b._sisnri[0], base - pit_si_snr_loss(targets, avg_est))
    torch.testing.assert_close(b._sisnri_raw[0], base - pit_si_snr_loss(targets, raw_est))
    b.on_stage_end(sb.Stage.VALID, 0.0, 1)
    stats = b.hparams.train_logger.valid[-1]
    assert stats["si-snri"] != stats["si-snri-raw"]
    # without an average (ema_decay null) there is no second figure
    plain = brain(None)
    plain.on_stage_start(sb.Stage.VALID, 1)
    plain.evaluate_batch(valid, sb.Stage.VALID)
    plain.on_stage_end(sb.Stage.VALID, 0.0, 1)
    assert plain.weight_average is None
    assert "si-snri-raw" not in plain.hparams.train_logger.valid[-1]


def test_checkpoints_keep_the_average_and_older_checkpoints_still_load(tmp_path):
    # a run checkpointed before ema_decay was switched on (the better validation)
    old = brain(None, KillSafeCheckpointer(tmp_path))
    old_ckpt = old.checkpointer.save_checkpoint(meta={"si-snr": 5.0})
    assert "weight_average" not in old_ckpt.paramfiles
    # resumed with the average: it starts at the first step after the resume
    b = brain(0.8, KillSafeCheckpointer(tmp_path), seed=1)
    assert b.checkpointer.recover_if_possible() is not None
    assert int(b.weight_average.n_averaged) == 0
    b.on_stage_start(sb.Stage.TRAIN, 1)
    for step in range(3):
        b.fit_batch(batch(step))
    new_ckpt = b.checkpointer.save_checkpoint(meta={"si-snr": 3.0})
    state, averaged = read_checkpoint_weights(new_ckpt.paramfiles)
    assert averaged
    for name, p in b.weight_average.module.named_parameters():
        torch.testing.assert_close(state[name], p.detach())
    # the best checkpoint (the old one, without the average's file) is not "broken"
    again = brain(0.8, KillSafeCheckpointer(tmp_path), seed=2)
    with pytest.warns(UserWarning, match="optional"):
        found = again.checkpointer.recover_if_possible(max_key="si-snr")
    assert found.path == old_ckpt.path and old_ckpt.path.is_dir()
    assert int(again.weight_average.n_averaged) == 0
    state, averaged = read_checkpoint_weights(old_ckpt.paramfiles)
    assert not averaged  # export takes the weights as trained there
    # the newest checkpoint gives back the average where it was
    last = brain(0.8, KillSafeCheckpointer(tmp_path), seed=3)
    last.checkpointer.recover_if_possible()
    assert int(last.weight_average.n_averaged) == 3
    for a, p in zip(last.weight_average.module.parameters(), b.weight_average.module.parameters()):
        torch.testing.assert_close(a, p)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "fast"])
def test_a_wrong_decay_is_one_clear_error(bad):
    with pytest.raises(UserError, match="ema_decay must be a number between 0 and 1"):
        brain(bad)
