"""A small SPMamba overfits one real 2-speaker mixture to >= 10 dB SI-SNRi.

The model keeps SPMamba's structure and its 8 kHz STFT (n_fft 256, hop 64,
unfold 8/1, full-band attention, spectral mapping) at a reduced width: one
block, ``emb_dim=8``, ``expand=2``. Training: uPIT negative SI-SNR, Adam
(lr 1e-2), gradient clipping at 5 (as SPMamba), fixed seed; it stops as soon
as the target is reached (about 25 steps, ~30 s of CPU time on one thread).

Authors
-------
 * sb_mamba developers
"""

import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from sb_mamba.lobes.spmamba import SPMamba
from tests.helpers import make_mixture, si_snr_improvement

TARGET_DB = 10.0
MAX_STEPS = 100


def test_spmamba_overfits_one_mixture():
    torch.manual_seed(0)
    mix, sources = make_mixture(seconds=1.0)  # [1, T], [1, T, 2]
    model = SPMamba(
        num_spks=2,
        n_fft=256,
        hop_length=64,
        num_layers=1,
        emb_dim=8,
        expand=2,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster on a busy CPU
    try:
        best = -float("inf")
        for _ in range(MAX_STEPS):
            est = model(mix)  # [1, T, 2]
            loss = get_si_snr_with_pitwrapper(sources, est).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            best = max(best, si_snr_improvement(est.detach(), sources, mix))
            if best >= TARGET_DB:
                break
    finally:
        torch.set_num_threads(threads)
    assert best >= TARGET_DB, f"SI-SNRi {best:.2f} dB after {MAX_STEPS} steps"
