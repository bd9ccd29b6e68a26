"""Metrics against references: SpeechBrain's SI-SNR PIT and mir_eval's SDR.

Authors
-------
 * sb_mamba developers
"""

import warnings

import numpy as np
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from sb_mamba.metrics import pit_metric, pit_si_snr_loss, pit_snr_loss, sdr, snr
from tests.helpers import make_mixture


def test_pit_si_snr_matches_speechbrain():
    g = torch.Generator().manual_seed(0)
    for S in (2, 3):
        t = torch.randn(3, 4000, S, generator=g)
        perm = torch.randperm(S, generator=g)
        e = t[..., perm] + 0.3 * torch.randn(3, 4000, S, generator=g)
        torch.testing.assert_close(
            pit_si_snr_loss(t, e), get_si_snr_with_pitwrapper(t, e), rtol=1e-4, atol=1e-4
        )
        _, best = pit_metric(t, e)
        assert torch.equal(perm[best[0]], torch.arange(S))


def test_snr_loss_by_hand():
    t = torch.randn(1, 1000, 2)
    noise = 0.1 * torch.randn(1, 1000, 2)
    e = (t + noise).flip(-1)  # swapped estimates
    tz = t - t.mean(1, keepdim=True)
    nz = noise - noise.mean(1, keepdim=True)
    expected = (10 * torch.log10((tz**2).sum(1) / (nz**2).sum(1))).mean()
    assert abs(-pit_snr_loss(t, e).item() - expected.item()) < 1e-3
    assert snr(t[..., 0], t[..., 0]).item() > 60


def test_sdr_matches_mir_eval_on_real_speech():
    import mir_eval

    mix, sources = make_mixture(seconds=1.0)
    est = sources[0].flip(-1) + 0.2 * mix[0, :, None]  # swapped, with crosstalk
    ours = sdr(sources[0], est).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _, _, _ = mir_eval.separation.bss_eval_sources(sources[0].T.numpy(), est.T.numpy())
    np.testing.assert_allclose(np.sort(ours), np.sort(ref), atol=1e-2)
