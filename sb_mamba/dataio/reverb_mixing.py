"""Reverberant (and noisy) dynamic mixing: WHAMR!- and Echo2Mix-style mixtures.

:class:`ReverbDynamicMixing` is :class:`~sb_mamba.dataio.dynamic_mixing.
DynamicMixingDataset` with each dry source convolved (FFT) with a RIR of
one room: from a precomputed bank (:mod:`sb_mamba.dataio.reverb`; the
training loop never simulates) or, without a bank, from a room simulated
for the item. Definitions (what the tests check, within 0.1 dB):

* **image** ``x_k``: dry source ``k`` (placed at its offset in the T-sample
  item) convolved with its full RIR, first T samples kept;
* **level** of source ``k``: ``10 log10(sum(x_k^2) / n_k)``, ``n_k`` its
  dry samples (the dry-case "RMS over its own samples"), set to
  ``REF_RMS_DB`` + its drawn gain, so relative levels = gain differences;
* **mixture** ``sum_k x_k + noise``; **SNR** ``10 log10(sum((sum_k x_k)^2)
  / sum(noise^2))``, on the reverberant speech, as WHAM!/WHAMR!;
* **targets** (``reverb_target``), each with the image's own scale factor:
  ``anechoic`` = dry * direct-path RIR (delayed, attenuated; WHAMR!'s
  ``s*_anechoic``), ``early`` = dry * (RIR up to ``early_ms`` after the
  direct path), ``reverberant`` = the image itself (Echo2Mix's
  ``spk*_reverb``). All keep the direct-path delay, so they are
  time-aligned with the mixture.

Authors
-------
 * sb_mamba developers
"""

import numpy as np
from speechbrain.utils.logger import get_logger

from sb_mamba.dataio.dynamic_mixing import REF_RMS_DB, DynamicMixingDataset
from sb_mamba.dataio.reverb import RirBank, check_bank
from sb_mamba.dataio.room import (
    draw_room,
    early_rir,
    reverberate,
    room_ranges,
    simulate_room,
)

logger = get_logger(__name__)

TARGETS = ("anechoic", "early", "reverberant")


class ReverbDynamicMixing(DynamicMixingDataset):
    """Dynamic mixing of reverberant speakers in one room per mixture, plus noise.

    Arguments
    ---------
    speaker_folder : str or Path
        Root of a speaker tree (see :class:`DynamicMixingDataset`, whose
        keyword arguments, e.g. ``noise_folder`` and ``snr_db_range``, all
        apply).
    use_reverb : bool
        False: exactly :class:`DynamicMixingDataset` (dry mixtures).
    rir_bank : str or Path, optional
        Bank folder (``make_rir_bank``) or a folder of measured ``.wav``
        RIRs. Each mixture takes one room at random and ``num_spks``
        distinct source positions of it. None: a room is drawn from
        ``room_ranges`` and simulated per item (seconds per item: for
        tests and data generation, not for training).
    reverb_target : str
        ``"anechoic"``, ``"early"`` or ``"reverberant"`` (see the module).
    early_ms : float
        Early-reverberation window after the direct path (``"early"``).
    room_ranges : dict, optional
        Overrides of ``WHAMR_RANGES`` (only without ``rir_bank``).
    rir_choice : str
        ``"random"`` room per item, or ``"index"``: room ``(room_offset +
        idx) % rooms`` (one room per mixture, as the dataset generator uses).
    room_offset : int
        See ``rir_choice``.
    mic : int
        RIR channel used (reference mic).
    extra_targets : tuple of str
        Further target kinds rendered into ``render(spec)["extra"]`` as
        ``<kind>`` [S, T] (the dataset generator writes them all).
    **kwargs
        Passed to :class:`DynamicMixingDataset`.

    Example
    -------
    >>> import tempfile, torch
    >>> from sb_mamba.audio import write_audio
    >>> root = tempfile.mkdtemp()
    >>> for spk in "ab": write_audio(f"{root}/{spk}/u.wav", torch.randn(12000) / 9, 8000)
    >>> ds = ReverbDynamicMixing(root, epoch_size=2, segment_seconds=1.0,
    ...                          room_ranges={"rt60": [0.2, 0.2]})
    >>> ds[0]["mix_sig"].shape, ds[0]["s2_sig"].shape
    (torch.Size([8000]), torch.Size([8000]))
    """

    def __init__(self, speaker_folder, use_reverb=True, rir_bank=None,
                 reverb_target="anechoic", early_ms=50.0, room_ranges=None,
                 rir_choice="random", room_offset=0, mic=0, extra_targets=(),
                 **kwargs):  # fmt: skip
        for kind in (reverb_target, *extra_targets):
            if kind not in TARGETS:
                raise ValueError(f"reverb_target must be one of {list(TARGETS)}; got {kind!r}.")
        if rir_choice not in ("random", "index"):
            raise ValueError(f"rir_choice must be 'random' or 'index'; got {rir_choice!r}.")
        if early_ms < 0:
            raise ValueError(f"early_ms must be >= 0; got {early_ms}.")
        super().__init__(speaker_folder, **kwargs)
        self.use_reverb, self.reverb_target, self.early_ms = bool(use_reverb), reverb_target, early_ms
        self.rir_choice, self.room_offset = rir_choice, int(room_offset)
        self.mic, self.extra_targets = int(mic), tuple(extra_targets)
        self.ranges, self.bank = _ranges(room_ranges), None
        if not self.use_reverb:
            return
        if rir_bank is not None:
            check_bank(rir_bank)
            self.bank = RirBank(rir_bank, self.sample_rate, self.mic, min_sources=self.num_spks)
        else:
            logger.warning("use_reverb without rir_bank: a room is simulated for every "
                           "mixture (0.1-5 s each); for training, precompute a bank with "
                           "sb-mamba-make-rir-bank and set rir_bank.")  # fmt: skip

    def _draw_extra(self, rng, spec, idx):
        """One room and ``num_spks`` distinct source positions in it."""
        if not self.use_reverb:
            return
        if self.bank is None:
            spec["room"] = draw_room(rng, self.ranges, self.num_spks, num_mics=1)
            return
        n = len(self.bank)
        pick = (self.room_offset + idx) % n if self.rir_choice == "index" else rng.integers(n)
        room = self.bank.rooms[int(pick)]
        spec["rirs"] = [room[j] for j in rng.choice(len(room), self.num_spks, replace=False)]

    def _extra_meta(self, spec, out):
        return {k: spec[k] for k in ("rirs", "room") if k in spec}

    def rirs(self, spec):
        """Per source: ``full``, ``direct`` RIR and ``direct_index`` (at the item rate)."""
        if "rirs" in spec:
            bank = self.bank
            if bank is None:
                raise ValueError("This spec names bank RIRs but the dataset has no rir_bank.")
            return [bank.get(r) for r in spec["rirs"]]
        sim = simulate_room(spec["room"], self.sample_rate)
        return [{"full": sim["rirs"][k, 0], "direct": sim["direct"][k, 0],
                 "direct_index": int(sim["direct_index"][k, 0])}
                for k in range(self.num_spks)]  # fmt: skip

    def _filter(self, kind, rir):
        if kind == "anechoic":
            return rir["direct"]
        if kind == "early":
            return early_rir(rir["full"], rir["direct_index"], self.sample_rate, self.early_ms)
        return rir["full"]

    def _images(self, spec, crops):
        """Reverberant images, targets and the ``extra_targets`` (see the module)."""
        if not self.use_reverb:
            return super()._images(spec, crops)
        S, T = self.num_spks, spec["length"]
        dry = np.zeros((S, T))
        for k, (wav, src) in enumerate(zip(crops, spec["sources"])):
            dry[k, src["offset"] : src["offset"] + len(wav)] = wav
        rirs = self.rirs(spec)
        images = np.stack([reverberate(dry[k], rirs[k]["full"]) for k in range(S)])
        kinds = {self.reverb_target, *self.extra_targets} - {"reverberant"}
        filtered = {kind: np.stack([reverberate(dry[k], self._filter(kind, rirs[k]))
                                    for k in range(S)]) for kind in kinds}  # fmt: skip
        filtered["reverberant"] = images
        n = np.array([s["length"] for s in spec["sources"]])
        energy = np.maximum(np.sum(images**2, axis=1) / n, 1e-16)
        gain = 10 ** ((REF_RMS_DB + np.array(spec["gains_db"])) / 20) / np.sqrt(energy)
        filtered = {kind: x * gain[:, None] for kind, x in filtered.items()}
        extra = {kind: filtered[kind] for kind in self.extra_targets}
        return filtered["reverberant"], filtered[self.reverb_target], extra


def _ranges(overrides):
    """``room_ranges`` from YAML (None or a dict)."""
    return room_ranges(dict(overrides) if overrides else None)


def check_remix(dataset, hparams):
    """Refuse augmentations that re-sum anechoic or early targets into the mixture.

    Speed perturbation and random shifts rebuild the mixture as the sum of
    the targets (+ noise): right only when the targets are the reverberant
    images themselves.

    Example
    -------
    >>> check_remix(object(), {"use_speedperturb": True})  # a dry dataset: fine
    """
    target = getattr(dataset, "reverb_target", None) if getattr(dataset, "use_reverb", False) \
        else None  # fmt: skip
    remix = [k for k in ("use_speedperturb", "use_rand_shift") if hparams.get(k, False)]
    if target not in (None, "reverberant") and remix:
        raise ValueError(
            f"{' and '.join(remix)} re-create the mixture as the sum of the targets, but "
            f"reverb_target={target!r} differs from the reverberant mixture: set "
            f"{'/'.join(remix)} to False or reverb_target to reverberant."
        )
