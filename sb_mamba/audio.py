"""Audio files and paths: reading, writing and resampling, with errors that
name the problem and the fix.

Speech, noise and mixtures are read through :func:`read_audio` (soundfile; no
torchcodec needed) so that a missing, empty, corrupt, NaN-holding or
wrong-rate file fails in one place, in the main process, with one message
(a RIR bank reads its own float64 multichannel files and names the bank in
its errors). Every resampling in sb_mamba is :func:`resample`.

Authors
-------
 * sb_mamba developers
"""

import math
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError

logger = get_logger(__name__)

_SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile command (sndfile.h)
MIN_SAMPLE_RATE = 1000  # Hz: a header declaring less is broken, not speech
# Most samples a read may decode or resample to (10 hours at 16 kHz, ~2.3 GB
# of float32): a broken header cannot make a read take all the memory.
MAX_SAMPLES = 10 * 3600 * 16000


class AudioError(UserError):
    """A file that cannot be used as audio input (the message says why)."""


def audio_info(path):
    """Sample rate, frames and channels of ``path``, with clear errors.

    Arguments
    ---------
    path : str or Path
        Audio file.

    Returns
    -------
    soundfile._SoundFileInfo
        ``.samplerate``, ``.frames``, ``.channels``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"Audio file not found: {path}. Check the path (and data_folder).")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile: unknown format, truncated header, ...
        raise AudioError(
            f"Cannot decode {path} as audio ({e}). The file is corrupt or not a "
            "WAV/FLAC/OGG file: re-create or re-download it."
        ) from e
    if info.frames == 0:
        raise AudioError(f"Audio file {path} is empty (0 samples): re-create it.")
    if info.samplerate < MIN_SAMPLE_RATE:
        raise AudioError(
            f"{path} declares a sample rate of {info.samplerate} Hz (under "
            f"{MIN_SAMPLE_RATE} Hz): its header is broken; re-create the file."
        )
    return info


def resample(wav, orig_sr, new_sr):
    """Band-limited polyphase resampling along the last axis (``scipy.signal.resample_poly``).

    Arguments
    ---------
    wav : torch.Tensor or numpy.ndarray
        [..., T] float signal.
    orig_sr, new_sr : int
        Rates.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        [..., T * new_sr / orig_sr]: a float32 tensor for a tensor, an array
        of the input's precision for an array.

    Example
    -------
    >>> resample(torch.randn(2, 16000), 16000, 8000).shape
    torch.Size([2, 8000])
    >>> resample(np.ones(441), 44100, 16000).dtype
    dtype('float64')
    """
    if orig_sr == new_sr:
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if isinstance(wav, np.ndarray):
        return resample_poly(wav, up, down, axis=-1)
    out = resample_poly(wav.numpy(), up, down, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def inside(path, folder):
    """Whether ``path`` is ``folder`` or lies inside it (links followed).

    Example
    -------
    >>> inside("/tmp/a/b.yaml", "/tmp/a"), inside("/tmp/a/../b.yaml", "/tmp/a")
    (True, False)
    """
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def read_audio(
    path, sample_rate=None, resample_to_rate=False, mono=True, start=0, stop=None, max_samples=None
):
    """Read an audio file as float32, checking what separation needs.

    Arguments
    ---------
    path : str or Path
        Audio file (anything libsndfile decodes).
    sample_rate : int, optional
        The rate the caller needs. When the file differs: resample if
        ``resample_to_rate`` else raise :class:`AudioError` naming both rates.
    resample_to_rate : bool
        Resample instead of failing on a rate mismatch (logged).
    mono : bool
        Average the channels of a multi-channel file (logged) -> [T];
        else return [T, C].
    start, stop : int
        Frame range to read (at the file's own rate).
    max_samples : int, optional
        Refuse (before decoding) a read whose decoded or resampled size
        would pass this many samples; default :data:`MAX_SAMPLES`.

    Returns
    -------
    torch.Tensor
        [T] (mono) or [T, C].

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> write_audio(path, torch.zeros(800) + 0.1, 8000)
    >>> read_audio(path, 8000).shape
    torch.Size([800])
    """
    info = audio_info(path)
    limit = MAX_SAMPLES if max_samples is None else int(max_samples)
    frames = len(range(*slice(start, stop).indices(info.frames)))
    rate = sample_rate if sample_rate and resample_to_rate else info.samplerate
    size = max(frames * info.channels, math.ceil(frames * rate / info.samplerate))
    if size > limit:
        raise AudioError(
            f"{path} would decode to {size} samples ({frames / info.samplerate / 3600:.1f} h "
            f"at {info.samplerate} Hz), over the limit of {limit}: split the file, or "
            "raise the limit (max_samples, --max-hours) if it is really that long."
        )
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"Cannot decode {path} as audio ({e}): the file is corrupt.") from e
    if not np.isfinite(data).all():
        raise AudioError(
            f"{path} contains NaN or infinite samples: the file is corrupt; re-create it."
        )
    wav = torch.from_numpy(data)  # [T, C]
    if mono:
        if info.channels > 1:
            logger.debug("Downmixed %d channels of %s to mono.", info.channels, path)
        wav = wav.mean(dim=1)
    if sample_rate is not None and sr != sample_rate:
        if not resample_to_rate:
            raise AudioError(
                f"{path} is sampled at {sr} Hz but {sample_rate} Hz is expected. "
                f"Resample the data to {sample_rate} Hz (or use the {sr // 1000} kHz "
                "version of the dataset / set sample_rate accordingly)."
            )
        logger.debug("Resampled %s from %d Hz to %d Hz.", path, sr, sample_rate)
        wav = resample(wav.T if wav.dim() == 2 else wav, sr, sample_rate)
        wav = wav.T if not mono else wav
    return wav


TMP_PREFIX = ".sbm-"  # temporary files of write_audio: hidden, no audio suffix
TMP_SUFFIX = ".tmp"


def write_audio(path, wav, sample_rate, subtype="FLOAT"):
    """Write [T] or [T, C] float audio (32-bit float WAV by default).

    Arguments
    ---------
    path : str or Path
        Output file; parent folders are created. Written to a temporary file
        beside it, then renamed: a reader never sees half a file, and a link
        at ``path`` is replaced, never followed. The temporary file has an
        unpredictable short name (``.sbm-XXXXXXXX.tmp``, created with
        ``O_EXCL``/``O_NOFOLLOW`` by :func:`tempfile.mkstemp`), so a link
        planted in advance is never written through, any name that fits the
        filesystem can be written, and no ``*.wav`` pattern matches it.
    wav : torch.Tensor or numpy.ndarray
        [T] or [T, C].
    sample_rate : int
        Rate.
    subtype : str
        libsndfile subtype, e.g. ``"FLOAT"`` or ``"PCM_16"``. Files are
        byte-identical for identical input (no time-stamped PEAK chunk).

    Raises
    ------
    OSError
        A failed write, with its errno named (``No space left on device
        (ENOSPC)``); the temporary file is removed.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_audio(folder / "a.flac", torch.zeros(80), 8000, subtype="PCM_16")
    >>> [p.name for p in folder.iterdir()], sf.info(str(folder / "a.flac")).frames
    (['a.flac'], 80)
    """
    import errno
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav)
    channels = 1 if wav.ndim == 1 else wav.shape[1]
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    failed = []  # OSError raised inside libsndfile's write callback (it only says "System error.")
    try:
        os.fchmod(fd, 0o666 & ~umask)  # a plain file once in place, not mkstemp's 0600
        with _ErrnoFile(os.fdopen(fd, "w+b"), failed) as fobj:
            try:
                with sf.SoundFile(fobj, "w", int(sample_rate), channels, subtype, format=fmt) as f:
                    try:  # no PEAK chunk: it holds a time stamp (files would differ run to run)
                        sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
                    except AttributeError:  # soundfile internals moved: files stay valid
                        pass
                    f.write(wav)
            except (RuntimeError, AssertionError, sf.LibsndfileError) as e:
                if failed:  # (soundfile asserts that every frame was written)
                    raise failed[0] from None
                raise OSError(errno.EIO, f"Cannot write audio ({e})") from None
            if failed:  # e.g. a Ctrl-C inside a callback that libsndfile survived
                raise failed[0]
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None:
            raise
        name = errno.errorcode.get(e.errno, str(e.errno))
        raise OSError(e.errno, f"{e.strerror} ({name}) while writing {path}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


class _ErrnoFile:
    """A binary file whose errors are recorded, not raised into libsndfile's
    callbacks (where cffi would print and swallow them, a Ctrl-C included)."""

    def __init__(self, f, failed):
        self.f, self.failed = f, failed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.f.close()
        except OSError as e:
            if exc[0] is None:
                raise
            self.failed.append(e)

    def write(self, data):
        try:
            return self.f.write(data)
        except BaseException as e:  # noqa: BLE001 - re-raised by write_audio
            self.failed.append(e)
            return 0

    def seek(self, *args):
        try:
            return self.f.seek(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by write_audio
            self.failed.append(e)
            return -1

    def tell(self):
        try:
            return self.f.tell()
        except BaseException as e:  # noqa: BLE001 - re-raised by write_audio
            self.failed.append(e)
            return -1

    def __getattr__(self, name):
        return getattr(self.f, name)


def remove_temp_files(folder):
    """Remove temporary files of :func:`write_audio` left under ``folder`` by a
    killed run (and those of older sb_mamba versions, ``.<stem>.<pid>.tmp.<ext>``).

    Returns
    -------
    int
        How many were removed.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".sbm-x1y2.tmp").write_bytes(b"cut")
    >>> _ = (folder / ".a.123.tmp.wav").write_bytes(b"cut")
    >>> remove_temp_files(folder), sorted(folder.iterdir())
    (2, [])
    """
    old = re.compile(r"\..+\.\d+\.tmp\.\w+")
    removed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            if (name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)) or old.fullmatch(name):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed
