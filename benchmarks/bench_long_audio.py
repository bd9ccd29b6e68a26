"""Separate a long (default 10 minutes) 8 kHz recording: time, RTF, memory.

The recording is built from real speech: the LibriMini test utterances
(``recipes/LibriMini/data/test/*/*.flac``) are split by speaker into two
groups, each group is concatenated and looped into one stream, and the two
streams are summed. It is written to a WAV file and separated with
:meth:`sb_mamba.inference.MambaSeparator.separate_file` (chunked overlap-add
by default), as a user would. Reported: wall time, real-time factor (wall /
audio duration; also from the process CPU time, which other load on the
machine does not change), peak RSS (``resource.getrusage``), whether the output length
equals the input length, and the SI-SNRi against the two streams.

Usage::

    python benchmarks/bench_long_audio.py                      # 10 min, 10 s chunks
    python benchmarks/bench_long_audio.py --seconds 30 --chunk-seconds 4
    python benchmarks/bench_long_audio.py --model pretrained/sepmamba-librimini-8k
    python benchmarks/bench_long_audio.py --chunk-seconds 0    # one pass (memory!)
    python benchmarks/bench_long_audio.py --fragment spmamba --precision int8 --threads 1

``--model`` defaults to ``pretrained/sepmamba-librimini-8k`` when it exists,
else a freshly initialised SepMamba-S-shaped small model (the LibriMini
recipe's size: ``dim 32``, one block per direction; untrained, so its SI-SNRi
is meaningless, but time and memory are representative).

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "pretrained" / "sepmamba-librimini-8k"
SPEECH = ROOT / "recipes" / "LibriMini" / "data" / "test"
SMALL = {"dim": 32, "num_blocks": 1}  # the fresh default: the LibriMini recipe's size


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def speech_streams(seconds, sample_rate=8000):
    """Two [T] speech streams from disjoint LibriMini test speakers, looped."""
    import torch

    from sb_mamba.audio import read_audio

    speakers = sorted(p for p in SPEECH.iterdir() if p.is_dir())
    if len(speakers) < 2:
        raise FileNotFoundError(f"Need LibriMini test speech in {SPEECH}.")
    T = int(seconds * sample_rate)
    streams = []
    for group in (speakers[0::2], speakers[1::2]):
        utts = [
            read_audio(f, sample_rate, resample_to_rate=True)
            for spk in group
            for f in sorted(spk.glob("*.flac"))
        ]
        utts = [u / (u.std() + 1e-8) * 0.1 for u in utts]
        one = torch.cat(utts)
        streams.append(one.repeat(T // one.numel() + 1)[:T])
    return streams


def load_model(model, device, precision="fp32", fragment=None):
    """MambaSeparator from a folder / hub id, or a fresh model of a fragment
    (default: a small SepMamba)."""
    import torch

    from sb_mamba.inference import MambaSeparator
    from sb_mamba.resources import load_fragment

    run_opts = {"device": device, "precision": precision}
    if model:
        return MambaSeparator.from_hparams(source=model, run_opts=run_opts)
    torch.manual_seed(0)
    hp = load_fragment(fragment) if fragment else load_fragment("sepmamba_s", SMALL)
    hparams = {"sample_rate": hp["sample_rate"], "num_spks": hp["num_spks"]}
    return MambaSeparator({"separator": hp["separator"]}, hparams, run_opts=run_opts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = str(DEFAULT_MODEL) if DEFAULT_MODEL.is_dir() else ""
    p.add_argument(
        "--model",
        default=default,
        help="model folder or hub id (default: see the module docstring)",
    )
    p.add_argument("--seconds", type=float, default=600.0, help="recording length")
    p.add_argument(
        "--chunk-seconds",
        type=float,
        default=10.0,
        help="0: one pass (default 10: what chunk_seconds='auto' uses)",
    )
    p.add_argument(
        "--fragment",
        default=None,
        help="instead of --model: a fresh, untrained model of hparams/models/NAME.yaml "
        "(e.g. spmamba, sepmamba_s): time and memory only",
    )
    p.add_argument("--precision", default="fp32", help="fp32 (default), int8, ...")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    import torch

    from sb_mamba.audio import write_audio
    from sb_mamba.metrics import pit_metric, si_snr

    if args.threads:
        torch.set_num_threads(args.threads)
    s1, s2 = speech_streams(args.seconds)
    mix = s1 + s2
    model = load_model(
        None if args.fragment else args.model, args.device, args.precision, args.fragment
    )
    sr = model.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long_mixture.wav"
        write_audio(wav, mix, sr)
        rss_before = _peak_rss_mb()
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        est = model.separate_file(
            wav, chunk_seconds=args.chunk_seconds or None, overlap=args.overlap, progress=True
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        load_after = os.getloadavg()[0]
    refs = torch.stack([s1, s2], -1)[None]
    si = pit_metric(refs, est)[0].item()
    base = pit_metric(refs, mix[None, :, None].expand_as(refs), si_snr)[0].item()
    res = {
        "model": (f"fresh {args.fragment}, untrained" if args.fragment else args.model)
        or "fresh SepMamba (dim 32, 1 block), untrained",
        "precision": args.precision,
        "date": time.strftime("%Y-%m-%dT%H:%M"),
        "command": "python benchmarks/bench_long_audio.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "params_M": sum(q.numel() for q in model.mods.parameters()) / 1e6,
        "audio_s": mix.numel() / sr,
        "chunk_s": args.chunk_seconds,
        "overlap": args.overlap,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "rtf": wall / (mix.numel() / sr),
        "cpu_s": cpu,
        "cpu_rtf": cpu / (mix.numel() / sr),  # process CPU time: the same under load
        "load_avg_1min": [load_before, load_after],
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_before_mb": rss_before,
        "length_ok": est.shape[1] == mix.numel(),
        "si_snri_db": si - base,
    }
    print(
        f"{res['audio_s']:.0f} s of 8 kHz speech, {res['model']} "
        f"({res['params_M']:.2f} M params), chunks {args.chunk_seconds:g} s, "
        f"overlap {args.overlap:g}, {args.device}, {res['threads']} threads"
    )
    print(
        f"wall {wall:.1f} s | RTF {res['rtf']:.3f} (CPU time: {res['cpu_rtf']:.3f}; "
        f"load {load_before:.1f} -> {load_after:.1f}) | peak RSS "
        f"{res['peak_rss_mb']:.0f} MB (before separation {rss_before:.0f} MB) | "
        f"length ok: {res['length_ok']} | SI-SNRi {res['si_snri_db']:.2f} dB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["length_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
