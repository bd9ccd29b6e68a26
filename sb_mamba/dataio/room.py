"""Shoebox room simulation (pyroomacoustics), RIR cutting and FFT convolution.

Every pyroomacoustics call of sb_mamba goes through this module, with the
package constants it depends on pinned for the duration of the call (speed
of sound 343 m/s, 81-tap fractional delays, one thread so that results are
bit-identical run to run, and pyroomacoustics' own RIR high-pass filter off:
we apply the same 10 Hz zero-phase high-pass ourselves, so that the RIRs do
not change with the pyroomacoustics version).

A room is drawn from :data:`WHAMR_RANGES` (overridable): length and width
5-10 m, height 3-4 m and RT60 0.1-1.0 s, uniform, as in WHAMR!; a 2-mic
array (15-17 cm, WHAMR!'s binaural spacing) within 0.5 m of the room centre
at 1.0-1.6 m height; each source 1-2 m from the array centre, at a random
azimuth, within 0.3 m of the array height, at least 0.3 m from every wall.
The wall absorption comes from inverting Sabine's formula for the drawn
RT60 and the image-source order from the same sphere rule as
``pra.inverse_sabine``. The image-source model does not decay at Sabine's
rate (its tail is up to 1.7x longer at 0.9 s), so :func:`simulate_room`
then measures the RT60 (T30, ``pra.experimental.measure_rt60``) and corrects
the absorption, ``a' = 1 - (1 - a) ** (measured / target)``, up to
``calibrate`` times, until the measured RT60 is within ``tolerance``.

Per source and mic it returns the full RIR, cut at ``1.2 * RT60`` after the
direct path, and the direct-path RIR: the same room simulated with image
order 0 (WHAMR!'s anechoic target), i.e. the delayed, attenuated direct
sound exactly as it appears in the full RIR. :func:`early_rir` cuts a full
RIR ``early_ms`` after the direct path (hard cut) for early-reverberation
targets. No target is shifted: all keep the direct-path delay, so they are
time-aligned with the reverberant mixture.

Authors
-------
 * sb_mamba developers
"""

import contextlib
import itertools
import math

import numpy as np
from scipy.signal import butter, fftconvolve, sosfiltfilt

from sb_mamba.audio import resample
from sb_mamba.errors import UserError

SPEED_OF_SOUND = 343.0  # m/s
SIM_RATE = 16000  # Hz; rooms are simulated at this rate, then resampled
RIR_TAIL = 1.2  # full RIRs are kept for RIR_TAIL * RT60 after the direct path
ABSORPTION_LIMITS = (0.01, 0.99)  # energy absorption coefficient bounds

WHAMR_RANGES = {
    "length": (5.0, 10.0),  # m, uniform (WHAMR!)
    "width": (5.0, 10.0),  # m, uniform (WHAMR!)
    "height": (3.0, 4.0),  # m, uniform (WHAMR!)
    "rt60": (0.1, 1.0),  # s, uniform (WHAMR!)
    "mic_offset": (-0.5, 0.5),  # m, array centre from the room centre, in x and y
    "mic_height": (1.0, 1.6),  # m
    "mic_spacing": (0.15, 0.17),  # m, between neighbouring mics (WHAMR!: binaural)
    "source_distance": (1.0, 2.0),  # m, from the array centre
    "source_height": (-0.3, 0.3),  # m, relative to the array height
    "wall_margin": (0.3, 0.3),  # m, minimum distance of any source or mic to a wall
}


def room_ranges(overrides=None):
    """:data:`WHAMR_RANGES` with ``overrides`` (a dict of ``name: [low, high]``).

    Example
    -------
    >>> room_ranges({"rt60": [0.3, 0.6]})["rt60"]
    (0.3, 0.6)
    """
    ranges = dict(WHAMR_RANGES)
    for key, value in (overrides or {}).items():
        if key not in ranges:
            raise UserError(f"Unknown room range {key!r}; valid names: {sorted(ranges)}.")
        low, high = (float(v) for v in value)
        if low > high:
            raise UserError(f"Room range {key} must be [low, high]; got {list(value)}.")
        ranges[key] = (low, high)
    if ranges["rt60"][0] <= 0:
        raise UserError(f"RT60 must be positive; got the range {ranges['rt60']}.")
    return ranges


def draw_room(rng, ranges=None, num_sources=2, num_mics=2):
    """Draw a room, its RT60, a mic array and source positions.

    Arguments
    ---------
    rng : numpy.random.Generator
        Source of randomness (the draw is a pure function of its state).
    ranges : dict, optional
        Overrides of :data:`WHAMR_RANGES`.
    num_sources, num_mics : int
        Sources (speaker positions) and mics (a line array).

    Returns
    -------
    dict
        ``room`` [3] (m), ``rt60`` (s), ``mics`` [num_mics, 3], ``sources``
        [num_sources, 3] (lists of floats).

    Example
    -------
    >>> room = draw_room(np.random.default_rng(0))
    >>> np.array(room["sources"]).shape, np.array(room["mics"]).shape
    ((2, 3), (2, 3))
    """
    r = room_ranges(ranges)
    u = lambda key: float(rng.uniform(*r[key]))  # noqa: E731
    dims = np.array([u("length"), u("width"), u("height")])
    rt60, margin = u("rt60"), r["wall_margin"][0]
    centre = np.array(
        [dims[0] / 2 + u("mic_offset"), dims[1] / 2 + u("mic_offset"), u("mic_height")]
    )
    centre = np.clip(centre, margin, dims - margin)
    spacing, axis = u("mic_spacing"), rng.uniform(0, np.pi)
    offsets = (np.arange(num_mics) - (num_mics - 1) / 2) * spacing
    mics = centre + offsets[:, None] * np.array([np.cos(axis), np.sin(axis), 0.0])
    sources = []
    for _ in range(num_sources):
        for _ in range(1000):  # a position at least wall_margin from every wall
            dist, azim = u("source_distance"), rng.uniform(0, 2 * np.pi)
            pos = centre + [dist * np.cos(azim), dist * np.sin(azim), u("source_height")]
            if np.all(pos >= margin) and np.all(pos <= dims - margin):
                break
        else:
            raise UserError(
                f"Cannot place a source {r['source_distance']} m from the "
                f"mics in a {dims.round(2)} m room: widen the ranges."
            )
        sources.append(pos)
    return {
        "room": dims.tolist(),
        "rt60": rt60,
        "mics": mics.tolist(),
        "sources": np.array(sources).tolist(),
    }


def sabine_absorption(room, rt60):
    """Energy absorption coefficient giving ``rt60`` by Sabine's formula.

    ``a = 24 ln(10) V / (c S RT60)``, clipped to :data:`ABSORPTION_LIMITS`
    (a short RT60 in a large room would need ``a > 1``).

    Example
    -------
    >>> round(sabine_absorption([6.0, 5.0, 3.0], 0.5), 3)
    0.23
    """
    room = np.asarray(room, dtype=float)
    volume = np.prod(room)
    surface = 2 * sum(a * b for a, b in itertools.combinations(room, 2))
    alpha = 24 * np.log(10) * volume / (SPEED_OF_SOUND * surface * rt60)
    return float(np.clip(alpha, *ABSORPTION_LIMITS))


def image_order(room, rt60):
    """Image-source order reaching ``c * rt60`` (the rule of ``pra.inverse_sabine``).

    Example
    -------
    >>> image_order([6.0, 5.0, 3.0], 0.5)
    66
    """
    radius = min(a * b / math.hypot(a, b) for a, b in itertools.combinations(room, 2))
    return max(1, int(math.ceil(SPEED_OF_SOUND * rt60 / radius - 1)))


@contextlib.contextmanager
def _pinned_pra():
    """pyroomacoustics with the constants sb_mamba relies on, restored afterwards."""
    import pyroomacoustics as pra

    pinned = {
        "c": SPEED_OF_SOUND,
        "frac_delay_length": 81,
        "num_threads": 1,
        "rir_hpf_enable": False,
    }
    saved = {}
    for key, value in pinned.items():
        try:
            saved[key] = pra.constants.get(key)
        except (KeyError, AttributeError):  # older versions lack some constants
            continue
        pra.constants.set(key, value)
    try:
        yield pra
    finally:
        for key, value in saved.items():
            pra.constants.set(key, value)


def _shoebox(room, absorption, max_order, sources, mics, fs):
    """RIRs [S, M, L] of a shoebox room (one pyroomacoustics simulation)."""
    with _pinned_pra() as pra:
        try:
            shoebox = pra.ShoeBox(
                room, fs=fs, max_order=max_order, materials=pra.Material(absorption)
            )
        except (AttributeError, TypeError):  # pyroomacoustics < 0.5
            shoebox = pra.ShoeBox(room, fs=fs, max_order=max_order, absorption=absorption)
        for src in sources:
            shoebox.add_source(list(src))
        shoebox.add_microphone_array(pra.MicrophoneArray(np.array(mics, dtype=float).T, fs))
        shoebox.compute_rir()
        rirs = shoebox.rir  # [M][S] arrays of various lengths
    out = np.zeros((len(sources), len(mics), max(len(h) for m in rirs for h in m)))
    for m, per_mic in enumerate(rirs):
        for s, h in enumerate(per_mic):
            out[s, m, : len(h)] = h
    return out


def measure_rt60(rir, sample_rate, decay_db=30):
    """RT60 of a RIR by pyroomacoustics' Schroeder-integral fit (T30 by default).

    Example
    -------
    >>> t = np.arange(8000) / 8000
    >>> h = np.random.default_rng(0).standard_normal(8000) * 10 ** (-3 * t / 0.5)
    >>> abs(measure_rt60(h, 8000) - 0.5) < 0.05
    True
    """
    with _pinned_pra() as pra:
        fn = getattr(getattr(pra, "experimental", None), "measure_rt60", None)
        fn = fn or pra.measure_rt60
        return float(fn(np.asarray(rir, dtype=float), fs=sample_rate, decay_db=decay_db))


def _highpass(rir, fs, cutoff=10.0):
    """Zero-phase 10 Hz high-pass (removes the DC of image-source RIRs)."""
    sos = butter(2, cutoff, btype="highpass", fs=fs, output="sos")
    return sosfiltfilt(sos, rir, axis=-1)


def simulate_room(params, sample_rate=SIM_RATE, calibrate=4, tolerance=0.05):
    """Simulate the RIRs of a room from :func:`draw_room`.

    Arguments
    ---------
    params : dict
        ``room``, ``rt60``, ``mics``, ``sources`` (see :func:`draw_room`).
    sample_rate : int
        Rate of the returned RIRs (simulated at :data:`SIM_RATE`, then
        resampled with ``scipy.signal.resample_poly``).
    calibrate : int
        Absorption corrections at most (0: Sabine's absorption as is).
    tolerance : float
        Stop correcting when ``|measured / target - 1| <= tolerance``.

    Returns
    -------
    dict
        ``rirs`` [S, M, L] and ``direct`` [S, M, Ld] (float64 at
        ``sample_rate``), ``direct_index`` [S, M] (sample of the direct-path
        peak), ``absorption``, ``absorption_sabine``, ``max_order`` and
        ``rt60_measured`` (T30 at mic 0, mean over sources).

    Example
    -------
    >>> params = {"room": [6, 5, 3], "rt60": 0.2, "mics": [[3, 2.5, 1.3]],
    ...           "sources": [[4.5, 2.5, 1.4], [2, 1.5, 1.3]]}
    >>> out = simulate_room(params, 8000, calibrate=0)
    >>> out["rirs"].shape[:2], out["direct"].shape[:2]
    ((2, 1), (2, 1))
    """
    room, rt60 = [float(x) for x in params["room"]], float(params["rt60"])
    sources, mics = params["sources"], params["mics"]
    alpha = alpha0 = sabine_absorption(room, rt60)
    order = image_order(room, rt60)
    direct = _shoebox(room, alpha, 0, sources, mics, SIM_RATE)
    keep = int(np.abs(direct).argmax(-1).max()) + int(math.ceil(RIR_TAIL * rt60 * SIM_RATE))
    for step in range(calibrate + 1):
        rirs = _highpass(_shoebox(room, alpha, order, sources, mics, SIM_RATE), SIM_RATE)
        rirs = rirs[..., :keep]
        measured = float(np.mean([measure_rt60(h, SIM_RATE) for h in rirs[:, 0]]))
        if step == calibrate or abs(measured / rt60 - 1) <= tolerance:
            break
        alpha = float(np.clip(1 - (1 - alpha) ** (measured / rt60), *ABSORPTION_LIMITS))
    rirs, direct = resample(rirs, SIM_RATE, sample_rate), resample(direct, SIM_RATE, sample_rate)
    return {
        "rirs": rirs,
        "direct": direct,
        "direct_index": np.abs(direct).argmax(-1),
        "absorption": alpha,
        "absorption_sabine": alpha0,
        "max_order": order,
        "rt60_measured": measured,
    }


def early_rir(rir, direct_index, sample_rate, early_ms=50.0):
    """The direct path plus the reflections of its first ``early_ms`` (hard cut).

    Taps up to ``direct_index + early_ms`` are kept unchanged, later ones
    dropped; the direct-path delay stays.

    Example
    -------
    >>> early_rir(np.ones(8000), 100, 8000, early_ms=50).shape
    (501,)
    """
    stop = int(direct_index) + int(round(early_ms * sample_rate / 1000)) + 1
    return np.asarray(rir)[..., :stop]


def windowed_direct(rir, sample_rate, direct_ms=1.0):
    """Direct path of a measured RIR: a Hann window of +-``direct_ms`` at its peak.

    Returns the windowed taps up to the end of the window, delay kept, and
    the peak index.

    Example
    -------
    >>> h = np.zeros(800); h[40] = 1.0; h[60:] = 0.1
    >>> direct, peak = windowed_direct(h, 8000)
    >>> direct.shape, peak, float(direct[40])
    ((49,), 40, 1.0)
    """
    rir = np.asarray(rir, dtype=float)
    peak, half = int(np.abs(rir).argmax()), max(1, int(round(direct_ms * sample_rate / 1000)))
    lo, hi = max(0, peak - half), min(len(rir), peak + half + 1)
    window = np.hanning(2 * half + 3)[1:-1]  # [2 * half + 1], 1 at the centre
    out = np.zeros(hi)
    out[lo:hi] = rir[lo:hi] * window[lo - peak + half : hi - peak + half]
    return out, peak


def reverberate(dry, rir):
    """Convolve (FFT) each dry source with its RIR, keeping the first T samples.

    Arguments
    ---------
    dry : numpy.ndarray
        [S, T] or [T].
    rir : numpy.ndarray
        [S, L] or [L] (shorter RIRs may be zero-padded to a common L).

    Returns
    -------
    numpy.ndarray
        [S, T] or [T]: what a mic records during the T samples.

    Example
    -------
    >>> reverberate(np.ones((2, 100)), np.ones((2, 10))).shape
    (2, 100)
    """
    dry, rir = np.asarray(dry, dtype=float), np.asarray(rir, dtype=float)
    return fftconvolve(dry, rir, axes=-1)[..., : dry.shape[-1]]
