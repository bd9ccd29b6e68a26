"""A small S4M must overfit one real 2-speaker mixture (uPIT SI-SNR, CPU).

Authors
-------
 * sb_mamba developers
"""

import time

import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from sb_mamba.lobes.s4m import S4M
from tests.helpers import make_mixture, si_snr_improvement

TARGET_DB = 10.0
MAX_STEPS = 400
CHECK_EVERY = 10


def _overfit(model, mix, sources):
    """Adam on one mixture until TARGET_DB; returns (best SI-SNRi, steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    best = -float("inf")
    for step in range(1, MAX_STEPS + 1):
        loss = get_si_snr_with_pitwrapper(sources, model(mix)).mean()  # uPIT
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % CHECK_EVERY == 0:
            with torch.no_grad():
                best = max(best, si_snr_improvement(model(mix), sources, mix))
            if best >= TARGET_DB:
                break
    return best, step


def test_s4m_overfits_one_mixture():
    """47k parameters; reaches 10 dB in 60-80 steps (about 20 s on one core)."""
    torch.manual_seed(0)
    mix, sources = make_mixture(seconds=1.0)  # [1, T], [1, T, 2]
    model = S4M(in_channels=64, out_channels=32, num_blocks=4, upsampling_depth=4)
    threads, start = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(1)  # small tensors: threads only add overhead on a busy CPU
    try:
        best, step = _overfit(model, mix, sources)
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    assert best >= TARGET_DB, f"SI-SNRi {best:.1f} dB after {step} steps ({elapsed:.0f} s)"
