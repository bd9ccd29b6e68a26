"""Long recordings in chunks: chunk bounds, windows and aligned overlap-add.

Ops on tensors only: :func:`chunked_separate` takes any ``separate(x [1, L])
-> [1, L, num_spks]`` callable, so it serves every separator and device.

Authors
-------
 * sb_mamba developers
"""

import math

import torch
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.metrics import pit_metric, si_snr

logger = get_logger(__name__)


def _ramps(length, left, right):
    """Chunk window: ``sin^2`` rise over the ``left`` samples shared with the
    previous chunk, ``cos^2`` fall over the ``right`` ones shared with the next
    (complementary: two overlapping chunks sum to one; a Hann window for
    ``overlap=0.5``), flat elsewhere; never zero."""

    def rise(n):  # sin^2 from ~0 to ~1; its mirror image is the cos^2 fall
        return torch.sin(0.5 * math.pi * (torch.arange(n) + 0.5) / n) ** 2

    w = torch.ones(length)
    w[:left] *= rise(left) if left else 1
    w[length - right :] *= rise(right).flip(0) if right else 1
    return w


def chunk_bounds(length, chunk, overlap=0.5, quantum=256):
    """``(start, end)`` of the chunks covering ``length`` samples.

    Strided models (SepMamba: stride 8 overall; STFT hops) change their
    output when the input moves by a fraction of their stride, so chunks start
    on a grid of ``q`` samples (``quantum`` halved until it is at most the hop
    ``chunk * (1 - overlap)``, which is rounded down to a multiple of ``q``).
    The last chunk starts on the grid at or before ``length - chunk`` and
    runs to the end (< ``q`` samples longer): nothing is zero-padded.

    Arguments
    ---------
    length, chunk : int
        Signal and chunk length, in samples.
    overlap : float
        Least fraction of a chunk shared with the next one, in [0, 1).
    quantum : int
        Largest grid step of the chunk starts (a power of two).

    Returns
    -------
    list of (int, int)

    Example
    -------
    >>> chunk_bounds(11, 4, 0.5)
    [(0, 4), (2, 6), (4, 8), (6, 11)]
    >>> chunk_bounds(20000, 4000, 0.5)[:2]
    [(0, 4000), (1792, 5792)]
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if length <= chunk:
        return [(0, length)]
    q = quantum
    while q > 1 and q > chunk * (1 - overlap):
        q //= 2
    hop = max(q, int(chunk * (1 - overlap)) // q * q)
    starts = list(range(0, length - chunk, hop))
    last = (length - chunk) // q * q
    if starts[-1] == last:
        starts.pop()
    return [(s, s + chunk) for s in starts] + [(last, length)]


def chunked_separate(separate, mix, num_spks, chunk, overlap=0.5, progress=False):
    """Separate a long mixture chunk by chunk with aligned overlap-add.

    Chunks come from :func:`chunk_bounds`. Each chunk's sources are first
    permuted to best match the previous chunk's output on their overlap
    (mean SI-SNR over all ``num_spks!`` permutations), then weighted by
    :func:`_ramps` (raised-cosine ramps spanning exactly the overlaps; the
    outer edges of the first and last chunks are not tapered) and added; the
    sum is divided by the summed weights, so the weights are one at every
    sample. One chunk runs at a time: memory is one chunk of activations
    plus the [T, num_spks] output.

    Arguments
    ---------
    separate : callable
        ``separate(x [1, L]) -> [1, L, num_spks]``.
    mix : torch.Tensor
        [T] mixture.
    num_spks, chunk : int
        Number of sources; chunk length in samples.
    overlap : float
        Least fraction of a chunk shared with the next one, in [0, 1).
    progress : bool or None
        A tqdm bar over the chunks; ``None``: only on a terminal.

    Returns
    -------
    torch.Tensor
        [T, num_spks] on the CPU.

    Example
    -------
    >>> mix = torch.randn(1001)
    >>> est = chunked_separate(lambda x: torch.stack([x, -x], -1), mix, 2, 300)
    >>> torch.allclose(est[:, 0], mix, atol=1e-6)
    True
    >>> est.shape
    torch.Size([1001, 2])
    """
    T = mix.shape[-1]
    bounds = chunk_bounds(T, chunk, overlap)
    if len(bounds) == 1:
        return separate(mix[None])[0].detach().float().cpu()
    if overlap == 0:
        logger.warning("overlap=0: chunks can hardly be aligned, speakers may swap.")
    out, wsum = torch.zeros(T, num_spks), torch.zeros(T)
    prev = None
    bar = tqdm(
        bounds,
        desc="Separating",
        unit="chunk",
        dynamic_ncols=True,
        disable=None if progress is None else not progress,
    )
    for k, (a, b) in enumerate(bar):
        est = separate(mix[None, a:b])[0].detach().float().cpu()  # [L, S]
        left = max(0, bounds[k - 1][1] - a) if k > 0 else 0
        right = max(0, b - bounds[k + 1][0]) if k + 1 < len(bounds) else 0
        if prev is not None and left > 0:
            ref = prev[a - bounds[k - 1][0] :]
            est = est[:, pit_metric(ref[None], est[None, :left], si_snr)[1][0]]
        w = _ramps(b - a, left, right)
        out[a:b] += est * w[:, None]
        wsum[a:b] += w
        prev = est
    return out / wsum[:, None]
