"""Separation metrics and permutation-invariant losses.

* :func:`si_snr`, :func:`snr`: batched, in dB, differentiable.
* :func:`pit_si_snr_loss`, :func:`pit_snr_loss`: uPIT training losses
  (negative dB per example, best permutation over all ``num_spks!``), for 2
  or 3 speakers; SPMamba trains with the SNR one.
  :func:`pit_si_snr_silence_loss` also takes silent targets (single talkers).
* :func:`sdr`: BSS-eval SDR (512-tap distortion filter) from
  ``fast_bss_eval``, with the permutation that maximises it; it equals
  ``mir_eval.separation.bss_eval_sources``' SDR (checked in the tests).

Authors
-------
 * sb_mamba developers
"""

import itertools

import torch

EPS = 1e-8


def snr(est, ref, zero_mean=True):
    """Signal-to-noise ratio in dB along the last axis.

    Arguments
    ---------
    est, ref : torch.Tensor
        [..., T].
    zero_mean : bool
        Remove the means first (SPMamba's ``pairwise_neg_snr`` does).

    Returns
    -------
    torch.Tensor
        [...].

    Example
    -------
    >>> ref = torch.randn(3, 800)
    >>> snr(ref + 0.1 * torch.randn(3, 800), ref).shape
    torch.Size([3])
    """
    if zero_mean:
        est = est - est.mean(-1, keepdim=True)
        ref = ref - ref.mean(-1, keepdim=True)
    num = (ref**2).sum(-1)
    den = ((ref - est) ** 2).sum(-1)
    return 10 * torch.log10((num + EPS) / (den + EPS))


def si_snr(est, ref):
    """Scale-invariant SNR in dB along the last axis (zero-mean signals).

    Arguments
    ---------
    est, ref : torch.Tensor
        [..., T].

    Returns
    -------
    torch.Tensor
        [...].

    Example
    -------
    >>> ref = torch.randn(2, 800)
    >>> bool((si_snr(3 * ref, ref) > 60).all())  # a scaled copy is perfect
    True
    >>> si_snr(torch.randn(2, 800), ref).shape
    torch.Size([2])
    """
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) * ref / ((ref**2).sum(-1, keepdim=True) + EPS)
    noise = est - proj
    return 10 * torch.log10(((proj**2).sum(-1) + EPS) / ((noise**2).sum(-1) + EPS))


def pit_metric(targets, est, metric=si_snr):
    """Best-permutation mean of a metric.

    Arguments
    ---------
    targets, est : torch.Tensor
        [B, T, S].
    metric : callable
        ``metric(est [..., T], ref [..., T]) -> [...]`` (higher is better).

    Returns
    -------
    value : torch.Tensor
        [B], the metric averaged over sources for the best permutation.
    perm : torch.Tensor
        [B, S], ``est[..., perm[b, s]]`` matches ``targets[..., s]``.

    Example
    -------
    >>> t = torch.randn(2, 800, 3)
    >>> value, perm = pit_metric(t, t[..., [2, 0, 1]])
    >>> perm[0].tolist()
    [1, 2, 0]
    """
    B, T, S = targets.shape
    if est.shape != targets.shape:
        raise ValueError(
            f"Estimates {tuple(est.shape)} and targets {tuple(targets.shape)} must "
            "both be [B, T, num_spks]."
        )
    # pairwise[b, i, j] = metric(est_j, target_i)
    pairwise = metric(
        est.transpose(1, 2).unsqueeze(1), targets.transpose(1, 2).unsqueeze(2)
    )  # [B, S, S]
    return best_permutation(pairwise)


def best_permutation(pairwise):
    """Best-permutation mean of a pairwise score matrix.

    Arguments
    ---------
    pairwise : torch.Tensor
        [B, S, S], ``pairwise[b, i, j]`` the score of estimate ``j`` for
        target ``i`` (higher is better).

    Returns
    -------
    value : torch.Tensor
        [B], the mean score of the best permutation.
    perm : torch.Tensor
        [B, S], the estimate matched to each target.

    Example
    -------
    >>> value, perm = best_permutation(torch.tensor([[[0.0, 2.0], [4.0, 0.0]]]))
    >>> value.tolist(), perm.tolist()
    ([3.0], [[1, 0]])
    """
    S = pairwise.shape[-1]
    perms = torch.tensor(list(itertools.permutations(range(S))), device=pairwise.device)
    idx = torch.arange(S, device=pairwise.device)
    scores = pairwise[:, idx, perms].mean(-1)  # [B, S!]
    best = scores.argmax(-1)
    return scores.gather(1, best[:, None]).squeeze(1), perms[best]


def pit_si_snr_loss(targets, est):
    """uPIT negative SI-SNR, [B, T, S] x2 -> [B] (dB, lower is better).

    Example
    -------
    >>> t = torch.randn(2, 800, 2)
    >>> pit_si_snr_loss(t, t.flip(-1)).shape
    torch.Size([2])
    """
    return -pit_metric(targets, est, si_snr)[0]


def pit_si_snr_silence_loss(targets, est, floor_db=-30.0, silent_db=-60.0):
    """uPIT loss defined for silent targets (single talkers), [B, T, S] x2 -> [B].

    An active target scores its estimate by SI-SNR, as
    :func:`pit_si_snr_loss`. A silent target (energy below ``silent_db``
    relative to all targets together, e.g. the second output of a lone
    talker) scores it by how quiet it is: ``-10 log10(|est|^2 / |s|^2 +
    tau)``, ``s`` the sum of the targets and ``tau = 10^(floor_db / 10)``,
    a soft threshold as in MixIT (Wisdom et al., 2020): the score saturates
    at ``-floor_db`` (30 dB) once the output is that far below the speech,
    so the loss stays finite and bounded where SI-SNR against a zero
    target is undefined. The loss is minus the best permutation's mean.

    Arguments
    ---------
    targets, est : torch.Tensor
        [B, T, S].
    floor_db : float
        Output-to-speech level (dB) past which a silent target's score stops
        improving.
    silent_db : float
        Targets this far below the sum of the targets count as silent.

    Returns
    -------
    torch.Tensor
        [B], negative dB (lower is better).

    Example
    -------
    >>> talker = torch.randn(1, 800, 1)
    >>> targets = torch.cat([talker, torch.zeros_like(talker)], -1)
    >>> quiet = torch.cat([torch.zeros_like(talker), talker], -1)  # output 2 holds it
    >>> loss = pit_si_snr_silence_loss(targets, quiet)
    >>> loss.shape, bool(loss < -50)  # SI-SNR > 70 dB and a silent output: (70 + 30) / 2
    (torch.Size([1]), True)
    """
    if est.shape != targets.shape:
        raise ValueError(
            f"Estimates {tuple(est.shape)} and targets {tuple(targets.shape)} "
            "must both be [B, T, num_spks]."
        )
    pairwise = si_snr(est.transpose(1, 2).unsqueeze(1), targets.transpose(1, 2).unsqueeze(2))
    energy = (targets**2).sum(1)  # [B, S]
    speech = energy.sum(-1, keepdim=True) + EPS  # [B, 1]
    silent = energy <= speech * 10 ** (silent_db / 10)  # [B, S]
    quiet = -10 * torch.log10((est**2).sum(1) / speech + 10 ** (floor_db / 10))  # [B, S]
    pairwise = torch.where(silent[:, :, None], quiet[:, None, :], pairwise)
    return -best_permutation(pairwise)[0]


def pit_snr_loss(targets, est):
    """uPIT negative SNR (SPMamba's training loss), [B, T, S] x2 -> [B].

    Example
    -------
    >>> t = torch.randn(2, 800, 2)
    >>> bool((pit_snr_loss(t, t) < -50).all())
    True
    """
    return -pit_metric(targets, est, snr)[0]


def output_level_ratio(est):
    """Level of the loudest output over the quietest, dB, [B, T, S] -> [B].

    For a single talker the quietest output should be silence: the larger
    the ratio, the better the model leaves a lone voice in one output.

    Example
    -------
    >>> voice = torch.randn(1, 800, 1)
    >>> output_level_ratio(torch.cat([voice, 0.01 * voice], -1)).round().tolist()
    [40.0]
    """
    energy = (est.double() ** 2).sum(1)  # [B, S]
    return 10 * torch.log10((energy.max(-1).values + EPS) / (energy.min(-1).values + EPS))


def sdr(targets, est, filter_length=512):
    """BSS-eval SDR (dB) per source for the best permutation.

    Arguments
    ---------
    targets, est : torch.Tensor
        [T, S] (one example).
    filter_length : int
        Distortion filter taps (BSS-eval's 512).

    Returns
    -------
    torch.Tensor
        [S], float64.

    Example
    -------
    >>> t = torch.randn(4000, 2)
    >>> sdr(t, t.flip(-1) + 0.01 * torch.randn(4000, 2)).shape
    torch.Size([2])
    """
    import fast_bss_eval

    # NumPy backend: fast_bss_eval's torch solver was seen to hang in a
    # process that had changed torch's thread settings.
    ref = targets.T.double().cpu().numpy()
    out = est.T.double().cpu().numpy()
    return torch.from_numpy(fast_bss_eval.sdr(ref, out, filter_length=filter_length))
