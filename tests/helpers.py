"""The one module of helpers shared by sb_mamba's tests.

- Paths of the clone (``ROOT``, ``RECIPES``, the bundled LibriMini speech and
  the test samples).
- Real mixtures of the bundled LibriSpeech excerpts (:func:`make_mixture`).
- Inputs of the scan kernels (:func:`make_scan_inputs`, ``CPU_BACKENDS``).
- Recipes run as a user runs them (:func:`run_train_py`, ``python train.py
  hparams/X.yaml`` in the recipe's folder) or in-process with the ``prepare``
  of their ``train.py`` (:func:`load_prepare`), and their test results.
- Tiny datasets in the real WSJ0-mix, WHAM!, WHAMR!, LibriMix and Echo2Mix
  layouts (``make_<name>``, ``BUILDERS``).

Tiny datasets: Built only from the bundled real recordings (``tests/samples/speech_8k``: 4
LibriSpeech utterances of 4 speakers; ``tests/samples/noise_8k``: 2 noise
clips), so a fresh clone needs nothing else. Each mixture is ~1 s: every
source is a crop of a different utterance at a random offset, with a random
gain; the noise is a random crop of a noise clip at a random SNR in
[-6, 3] dB. Sums are consistent: ``mix_clean = s1 + s2 (+ s3)``,
``mix_both = mix_clean + noise``, ``mix_single = s1 + noise`` (before the
16-bit rounding of each file). Everything is seeded, so two calls give the
same files. WHAMR! and Echo2Mix reverberation is a synthetic exponentially
decaying noise RIR (a stand-in; not the WHAMR! room simulation).

Each ``make_<name>(root, ...)`` returns the ``data_folder`` to pass to the
matching ``sb_mamba.dataio.manifests.prepare_<name>``.

Authors
-------
 * sb_mamba developers
"""

import csv
import functools
import importlib.util
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import fftconvolve
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from sb_mamba.audio import read_audio, write_audio
from sb_mamba.resources import load_fragment  # noqa: F401 - the tests import it from here

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
LIBRIMINI_DATA = RECIPES / "LibriMini" / "data"  # what its train.py passes
SAMPLES = ROOT / "tests" / "samples"
SPEECH_8K = SPEECH_DIR = SAMPLES / "speech_8k"
NOISE_DIR = SAMPLES / "noise_8k"


# The CLI in a fresh interpreter that prints its own peak RSS (VmHWM, in kB) at
# exit. Not getrusage's ru_maxrss: Linux keeps that across fork + exec, so a
# child of a large pytest process would report the parent's peak.
PEAK_RSS_CLI = (
    "import sys; from sb_mamba import cli; rc = cli.main(sys.argv[1:]); "
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); sys.exit(rc)"
)


# ---------------------------------------------------------- model fragments
FRAGMENTS = sorted(p.name for p in (ROOT / "hparams" / "models").glob("*.yaml"))


# ------------------------------------------------------------ model folders
def old_layout_yaml(cls, kwargs, sample_rate, num_spks, origin=""):
    """The inference ``hyperparams.yaml`` that ``sb-mamba export`` wrote before
    model folders became data (config.json + safetensors), byte for byte."""
    import json

    def value(v):
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):  # always with a dot (YAML 1.1 reads 1e-05 as a string)
            mant, _, exp = repr(v).partition("e")
            mant = mant if "." in mant else mant + ".0"
            return mant + ("e" + (exp if exp[0] in "+-" else "+" + exp) if exp else "")
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    bar = "# " + "#" * 76
    return "\n".join(
        [
            bar,
            f"# Model: {cls.rsplit('.', 1)[-1]} ({cls}), {num_spks} speakers, {sample_rate} Hz",
            "# Inference hyperparameters of sb_mamba.inference.MambaSeparator,",
            "# written by sb_mamba.inference.export",
            *([f"# from {origin}"] if origin else []),
            bar,
            "",
            f"sample_rate: {int(sample_rate)} # Hz; inputs are resampled to this rate",
            f"num_spks: {int(num_spks)} # number of output sources",
            "",
            f"separator: !new:{cls}",
            *(f"    {k}: {value(v)}" for k, v in kwargs.items()),
            "",
            "modules:",
            "    separator: !ref <separator>",
            "",
            "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
            "    loadables:",
            "        separator: !ref <separator>",
            "",
        ]
    )


def tiny_model_folder(folder, layout="new", extra_yaml="", seed=0, **kwargs):
    """A real model folder of a tiny SepMamba with random weights.

    ``layout="new"``: config.json + separator.safetensors
    (:func:`sb_mamba.modelfolder.write_folder`); ``"old"``: the layout of
    earlier exports, ``hyperparams.yaml`` (plus ``extra_yaml``) and a pickled
    ``separator.ckpt``. Returns the separator.
    """
    from sb_mamba.lobes.sepmamba import SepMamba
    from sb_mamba.modelfolder import ModelConfig, write_folder
    from sb_mamba.nnet.mamba import set_ssm_backend

    torch.manual_seed(seed)
    backend = kwargs.pop("ssm_backend", "torch")  # a run option: set on the model, not stored
    args = dict(num_spks=2, dim=8, num_blocks=1, d_state=4) | kwargs
    net = SepMamba(**args).eval()
    set_ssm_backend(net, backend)
    cls = "sb_mamba.lobes.sepmamba.SepMamba"
    folder = Path(folder)
    if layout == "new":
        write_folder(folder, ModelConfig(cls, net.get_model_args(), 8000, 2), net.state_dict())
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hyperparams.yaml").write_text(
            old_layout_yaml(cls, net.get_model_args() | {"ssm_backend": "auto"}, 8000, 2)
            + extra_yaml
        )  # old exports stored the backend
        torch.save(net.state_dict(), folder / "separator.ckpt")
    return net


# ------------------------------------------------------------ real mixtures
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


# ------------------------------------------------------------- scan inputs
def _cpu_backends():
    backends = ["torch"]
    if os.environ.get("SB_MAMBA_NO_CPU_KERNEL") != "1":
        # A compiler is part of the supported set-up: the kernel must build.
        backends.append("cpu_kernel")
    return backends


CPU_BACKENDS = _cpu_backends()


LENGTHS = [1, 3, 255, 700]


def rand64(*shape, gen, scale=1.0, shift=0.0):
    """Float64 normal samples, ``shift + scale * N(0, 1)``."""
    return shift + scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def make_scan_inputs(B, L, Di, S, R, seed=0):
    """Float64 inputs of the fused scan in Mamba's ranges (requires_grad)."""
    gen = torch.Generator().manual_seed(seed)
    xz = rand64(B, L, 2 * Di, gen=gen)
    xdbl = rand64(B, L, R + 2 * S, gen=gen)
    w_dt = rand64(Di, R, gen=gen, scale=0.3)
    dt_bias = rand64(Di, gen=gen, scale=0.5, shift=-2.0)
    A = -torch.exp(rand64(Di, S, gen=gen, scale=0.5))
    D = rand64(Di, gen=gen)
    gy = rand64(B, L, Di, gen=gen)
    return [t.requires_grad_() for t in (xz, xdbl, w_dt, dt_bias, A, D)] + [gy]


# ------------------------------------------------------------------ recipes
SHRINK = {
    "sepmamba": ["--model_dim=8", "--model_blocks=1"],
    "spmamba": ["--model_emb_dim=4", "--model_layers=1"],
    "s4m": ["--model_out_channels=8", "--model_in_channels=16", "--model_blocks=1"],
}

COMMON = [
    "--N_epochs=1",
    "--batch_size=1",
    "--n_audio_to_save=0",
    "--segment_seconds=0.25",  # training crops (and dynamic-mixing items)
    "--dataloader_opts={batch_size: 1, num_workers: 0}",
]


def load_prepare(recipe):
    """The ``prepare`` that ``recipes/<recipe>/separation/train.py`` passes to main."""
    path = RECIPES / recipe / "separation" / "train.py"
    spec = importlib.util.spec_from_file_location(f"train_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the __main__ guard keeps main() from running
    return module.prepare


def recipe_cmd(recipe, yaml, *args, launcher=None):
    """Command line of ``train.py`` for ``recipes/<recipe>/separation``."""
    launcher = launcher or [sys.executable]
    return [*launcher, "train.py", f"hparams/{yaml}", *args]


def run_train_py(recipe, yaml, *args, timeout=600, launcher=None, check=True):
    """Run a recipe in its folder; return the CompletedProcess (output merged)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        recipe_cmd(recipe, yaml, *args, launcher=launcher),
        cwd=RECIPES / recipe / "separation",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"recipe failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def read_results(output_folder):
    """Rows of ``test_results.csv``; asserts the avg row and finite numbers."""
    path = Path(output_folder) / "test_results.csv"
    assert path.is_file(), f"{path} was not written"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[-1]["snt_id"] == "avg", rows
    for row in rows:
        for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
            assert math.isfinite(float(row[key])), (key, row)
    return rows


# ------------------------------------------- datasets in the real layouts
@functools.lru_cache(maxsize=4)
def _clips(folder, pattern, sample_rate):
    """(id, float64 array) for each bundled clip, resampled to ``sample_rate``."""
    paths = sorted(Path(folder).glob(pattern))
    assert paths, f"no bundled audio in {folder}"
    return tuple(
        (p.stem, read_audio(p, sample_rate, resample_to_rate=True).double().numpy()) for p in paths
    )


def _rms(x):
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def _rir(rng, sample_rate, t60=0.3):
    """Synthetic RIR: a unit direct path plus exponentially decaying noise."""
    t = np.arange(int(t60 * sample_rate)) / sample_rate
    rir = 0.3 * rng.standard_normal(t.size) * 10 ** (-3 * t / t60)  # -60 dB at t60
    rir[0] = 1.0
    return rir / np.linalg.norm(rir)


def _examples(n, num_spks, sample_rate, seed, seconds=1.0):
    """``n`` seeded examples with anechoic/reverberant sources and noise.

    Returns
    -------
    list of dict
        ``utts`` (utterance IDs), ``gains`` (dB), ``s`` [num_spks, T],
        ``s_reverb`` [num_spks, T], ``noise`` [T]; jointly scaled so that no
        mixture of them peaks above 0.9.
    """
    rng = np.random.default_rng(seed)
    speech = _clips(SPEECH_DIR, "*/*.wav", sample_rate)
    noises = _clips(NOISE_DIR, "*.wav", sample_rate)
    T = int(seconds * sample_rate)
    tuples = list(itertools.permutations(range(len(speech)), num_spks))
    if n > len(tuples):
        raise ValueError(f"At most {len(tuples)} distinct {num_spks}-speaker mixtures.")
    examples = []
    for k in rng.permutation(len(tuples))[:n]:
        gains = rng.uniform(-2.5, 2.5, num_spks)
        srcs = []
        for i, gain in zip(tuples[k], gains):
            wav = speech[i][1]
            off = rng.integers(0, len(wav) - T + 1)
            seg = wav[off : off + T]
            srcs.append(seg / _rms(seg) * 0.05 * 10 ** (gain / 20))  # ~ -26 dBFS
        s = np.stack(srcs)
        s_reverb = np.stack([fftconvolve(x, _rir(rng, sample_rate))[:T] for x in s])
        wav = noises[rng.integers(len(noises))][1]
        off = rng.integers(0, len(wav) - T + 1)
        noise = wav[off : off + T]
        noise = noise / _rms(noise) * _rms(s.sum(0)) * 10 ** (-rng.uniform(-6, 3) / 20)
        peak = max(
            np.abs(x).max()
            for x in (s.sum(0) + noise, s_reverb.sum(0) + noise, s[0] + noise, s_reverb[0] + noise)
        )
        scale = min(1.0, 0.9 / peak)
        examples.append(
            {
                "utts": [speech[i][0] for i in tuples[k]],
                "gains": gains,
                "s": s * scale,
                "s_reverb": s_reverb * scale,
                "noise": noise * scale,
            }
        )
    return examples


def _write(path, wav, sample_rate):
    write_audio(path, wav.astype(np.float32), sample_rate, subtype="PCM_16")


def _rate_folder(sample_rate):
    return f"wav{sample_rate // 1000}k"


def _wsj_name(ex):
    """WSJ0-mix style name: ``<utt1>_<gain1>_<utt2>_<gain2>...``."""
    return "_".join(f"{u}_{g:.5f}" for u, g in zip(ex["utts"], ex["gains"]))


def make_wsj0mix(root, num_spks=2, sample_rate=8000, n=(4, 2, 2), mode="min", seed=0):
    """``root/wsj0-mix/<num_spks>speakers/wav8k/<mode>/{tr,cv,tt}/{mix,s1,s2[,s3]}``.

    Returns the ``<num_spks>speakers`` folder.
    """
    data_folder = Path(root) / "wsj0-mix" / f"{num_spks}speakers"
    base = data_folder / _rate_folder(sample_rate) / mode
    for j, (split, count) in enumerate(zip(("tr", "cv", "tt"), n)):
        for ex in _examples(count, num_spks, sample_rate, seed * 10 + j):
            name = _wsj_name(ex) + ".wav"
            _write(base / split / "mix" / name, ex["s"].sum(0), sample_rate)
            for i, src in enumerate(ex["s"], 1):
                _write(base / split / f"s{i}" / name, src, sample_rate)
    return data_folder


def make_wham(root, num_spks=2, sample_rate=8000, n=(4, 2, 2), mode="min", seed=0):
    """``root/wham/wav8k/<mode>/{tr,cv,tt}/{mix_both,mix_clean,mix_single,s1,s2,noise}``.

    Returns the ``wham`` folder.
    """
    assert num_spks == 2, "WHAM! has 2 speakers"
    data_folder = Path(root) / "wham"
    base = data_folder / _rate_folder(sample_rate) / mode
    for j, (split, count) in enumerate(zip(("tr", "cv", "tt"), n)):
        for ex in _examples(count, 2, sample_rate, seed * 10 + j):
            name, d, s, noise = _wsj_name(ex) + ".wav", base / split, ex["s"], ex["noise"]
            for folder, wav in (
                ("mix_clean", s.sum(0)),
                ("mix_both", s.sum(0) + noise),
                ("mix_single", s[0] + noise),
                ("s1", s[0]),
                ("s2", s[1]),
                ("noise", noise),
            ):
                _write(d / folder / name, wav, sample_rate)
    return data_folder


def make_whamr(root, num_spks=2, sample_rate=8000, n=(4, 2, 2), mode="min", seed=0):
    """``root/whamr/wav8k/<mode>/{tr,cv,tt}/{mix_{both,clean,single}_{anechoic,reverb},
    s{1,2}_{anechoic,reverb},noise}``.

    The reverberant sources are the anechoic ones convolved with a synthetic
    RIR (the mixtures of each kind are sums of the matching sources).
    Returns the ``whamr`` folder.
    """
    assert num_spks == 2, "WHAMR! has 2 speakers"
    data_folder = Path(root) / "whamr"
    base = data_folder / _rate_folder(sample_rate) / mode
    for j, (split, count) in enumerate(zip(("tr", "cv", "tt"), n)):
        for ex in _examples(count, 2, sample_rate, seed * 10 + j):
            name, d, noise = _wsj_name(ex) + ".wav", base / split, ex["noise"]
            _write(d / "noise" / name, noise, sample_rate)
            for kind, s in (("anechoic", ex["s"]), ("reverb", ex["s_reverb"])):
                for folder, wav in (
                    (f"mix_clean_{kind}", s.sum(0)),
                    (f"mix_both_{kind}", s.sum(0) + noise),
                    (f"mix_single_{kind}", s[0] + noise),
                    (f"s1_{kind}", s[0]),
                    (f"s2_{kind}", s[1]),
                ):
                    _write(d / folder / name, wav, sample_rate)
    return data_folder


def make_librimix(
    root,
    num_spks=2,
    sample_rate=8000,
    n=(4, 2, 2),
    mode="min",
    seed=0,
    train_sets=("train-100", "train-360"),
):
    """``root/LibriMix/Libri<n>Mix/wav8k/<mode>/<set>/{mix_clean,mix_both,mix_single,s1,s2[,s3],noise}``.

    Sets: each of ``train_sets`` (``n[0]`` mixtures each), ``dev``, ``test``.
    Names are ``<utt1>_<utt2>[_<utt3>].wav`` as in LibriMix. Returns the
    ``LibriMix`` root (``<root>/Libri<n>Mix`` works too).
    """
    data_folder = Path(root) / "LibriMix"
    base = data_folder / f"Libri{num_spks}Mix" / _rate_folder(sample_rate) / mode
    sets = [(s, n[0]) for s in train_sets] + [("dev", n[1]), ("test", n[2])]
    for j, (subset, count) in enumerate(sets):
        for ex in _examples(count, num_spks, sample_rate, seed * 10 + j):
            name, d, s, noise = "_".join(ex["utts"]) + ".wav", base / subset, ex["s"], ex["noise"]
            for folder, wav in (
                ("mix_clean", s.sum(0)),
                ("mix_both", s.sum(0) + noise),
                ("mix_single", s[0] + noise),
                ("noise", noise),
            ):
                _write(d / folder / name, wav, sample_rate)
            for i, src in enumerate(s, 1):
                _write(d / f"s{i}" / name, src, sample_rate)
    return data_folder


def make_echo2mix(root, num_spks=2, sample_rate=16000, n=(4, 2, 2), seed=0):
    """``root/Echo2Mix/{train,val,test}/<record>/<room>/<spks>/{mix,spk1_reverb,spk2_reverb}.wav``.

    16 kHz (the 8 kHz speech is resampled); ``mix = spk1_reverb + spk2_reverb``.
    Returns the ``Echo2Mix`` folder.
    """
    data_folder = Path(root) / "Echo2Mix"
    for j, (split, count) in enumerate(zip(("train", "val", "test"), n)):
        for k, ex in enumerate(_examples(count, num_spks, sample_rate, seed * 10 + j)):
            spks = "_".join(u.split("-")[0] for u in ex["utts"])
            d = data_folder / split / f"record{k:03d}" / f"room{k % 2}" / spks
            _write(d / "mix.wav", ex["s_reverb"].sum(0), sample_rate)
            for i, src in enumerate(ex["s_reverb"], 1):
                _write(d / f"spk{i}_reverb.wav", src, sample_rate)
    return data_folder


BUILDERS = {
    "wsj0mix": make_wsj0mix,
    "wham": make_wham,
    "whamr": make_whamr,
    "librimix": make_librimix,
    "echo2mix": make_echo2mix,
}


def make_shared_data(root, seed=0):
    """A tiny copy of ``shared/data`` (the General recipe's input) and its split.

    ``root/data``: ``speech-l2/<speaker>/<utt>.flac`` (7 speakers: LibriMini's
    valid readers standing in for speechocean762's), ``noise/`` (the bundled
    noise clips, with ``noise.tsv``), ``rir/`` (the bundled measured RIRs of
    one room and two synthetic ones of another, with ``rir.tsv``);
    ``root/splits.json`` splits them as ``recipes/General/meta/splits.json``
    does (one simulated room per split). Returns ``(data_folder, splits)``.
    """
    import json
    import shutil

    root = Path(root)
    data = root / "data"
    spks = sorted(p for p in (LIBRIMINI_DATA / "valid").iterdir() if p.is_dir())[:7]
    for spk in spks:
        (data / "speech-l2" / spk.name).mkdir(parents=True, exist_ok=True)
        for f in spk.glob("*.flac"):
            shutil.copy(f, data / "speech-l2" / spk.name / f.name)
    (data / "noise").mkdir(parents=True, exist_ok=True)
    clips = sorted(NOISE_DIR.glob("*.wav"))
    for f in clips:
        shutil.copy(f, data / "noise" / f.name)
    (data / "noise" / "noise.tsv").write_text(
        "clip_id\tsource_id\n" + "".join(f"{f.stem}\t{f.stem}\n" for f in clips)
    )
    (data / "rir").mkdir(parents=True, exist_ok=True)
    rows = ["rir_id\troom\tlicense"]
    for f in sorted((SAMPLES / "rir").glob("*.wav")):
        shutil.copy(f, data / "rir" / f.name)
        rows.append(f"{f.stem}\tSurrey A\tMIT")
    rng = np.random.default_rng(seed)
    for name in ("synthB_1", "synthB_2"):
        sf.write(data / "rir" / f"{name}.wav", _rir(rng, 8000), 8000)
        rows.append(f"{name}\tsynthetic B\tCC0-1.0")
    (data / "rir" / "rir.tsv").write_text("\n".join(rows) + "\n")
    ids = [s.name for s in spks]
    split = {
        "speech-l2": {"train": ids[:4], "valid": ids[4:5], "test": ids[5:]},
        "noise": {"train": [clips[0].stem], "test": [c.stem for c in clips[1:]]},
        "rir": {
            "train": [f.stem for f in sorted((SAMPLES / "rir").glob("*.wav"))],
            "test": ["synthB_1", "synthB_2"],
        },
        "simulated_rooms": {"train": {"seed": 1, "rooms": 1}, "test": {"seed": 2, "rooms": 1}},
    }
    (root / "splits.json").write_text(json.dumps(split))
    return data, root / "splits.json"
