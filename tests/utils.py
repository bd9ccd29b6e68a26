"""Shared test helpers: real 2-speaker mixtures from ``tests/samples``.

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

import soundfile as sf
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

SAMPLES = Path(__file__).parent / "samples"
SPEECH_8K = SAMPLES / "speech_8k"


def load_speech(utt_id):
    """Load one bundled 8 kHz utterance as a float32 tensor [T]."""
    spk = utt_id.split("-")[0]
    wav, sr = sf.read(SPEECH_8K / spk / f"{utt_id}.wav", dtype="float32")
    assert sr == 8000
    return torch.from_numpy(wav)


def make_mixture(seconds=1.0, num_spks=2, offset=0.5, gains_db=(0.0, -2.5, -1.0)):
    """A real mixture of bundled LibriSpeech speakers at 8 kHz.

    Arguments
    ---------
    seconds : float
        Length of the mixture.
    num_spks : int
        2 or 3 speakers (female 32, male 26, male 27).
    offset : float
        Start of the crop in each utterance, in seconds.
    gains_db : tuple
        Gain of each source.

    Returns
    -------
    mix : torch.Tensor
        [1, T].
    sources : torch.Tensor
        [1, T, num_spks].
    """
    utts = ["32-21625-0000", "26-495-0000", "27-123349-0000"][:num_spks]
    start, length = int(offset * 8000), int(seconds * 8000)
    srcs = []
    for utt, g in zip(utts, gains_db):
        s = load_speech(utt)[start : start + length]
        s = s / s.std() * 10 ** (g / 20) * 0.1
        srcs.append(s)
    sources = torch.stack(srcs, dim=-1).unsqueeze(0)  # [1, T, S]
    return sources.sum(-1), sources


def si_snr_improvement(est, sources, mix):
    """Mean PIT SI-SNR improvement in dB of ``est`` [B, T, S] over ``mix`` [B, T]."""
    si_snr = -get_si_snr_with_pitwrapper(sources, est).mean()
    mix_rep = mix.unsqueeze(-1).expand_as(sources)
    base = -get_si_snr_with_pitwrapper(sources, mix_rep).mean()
    return (si_snr - base).item()
