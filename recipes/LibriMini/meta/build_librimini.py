"""Build the bundled LibriMini speech (recipes/LibriMini/data) from LibriSpeech.

LibriMini is a small, real, redistributable 8 kHz speech set that lets a fresh
clone train and evaluate a separator with no download. From the project's
shared LibriSpeech folder (CC BY 4.0):

* valid / test: 20 + 20 train-clean-100 readers (one utterance each, cut to
  their first 6 s), drawn by a seeded shuffle; these files never change, so
  figures stay comparable across versions of the set;
* train: **every other utterance** of the folder (all the other readers of
  train-clean-100 and of any other subset), full length.

Speakers never cross splits. Audio is resampled to 8 kHz and stored as
16-bit FLAC.

Usage (from the repository root; the source is laid out
``<speaker>/<utt>.wav`` with ``utterances.tsv``)::

    python recipes/LibriMini/meta/build_librimini.py ../shared/data/speech

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import random
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

HELD_OUT = {"valid": (20, 6.0), "test": (20, 6.0)}  # readers, seconds kept
N_ORIGINAL_TRAIN = 150  # train-clean-100 readers drawn before valid/test (v1 order)


def held_out_speakers(rows, seed):
    """valid/test speaker ids: the v1 draw (150 train, then 20 valid, 20 test)."""
    clean = sorted(
        (r for r in rows if r["librispeech_subset"] == "train-clean-100"),
        key=lambda r: int(r["speaker_id"]),
    )
    random.Random(seed).shuffle(clean)
    out, start = {}, N_ORIGINAL_TRAIN
    for split, (n, _) in HELD_OUT.items():
        out[split] = [r["speaker_id"] for r in clean[start : start + n]]
        start += n
    return out


def write_flac(src, dst, max_seconds=None):
    """Resample one source file to 8 kHz 16-bit FLAC; returns its duration (s)."""
    wav, sr = sf.read(src, dtype="float32")
    wav = resample_poly(wav, 1, sr // 8000)
    if max_seconds is not None:
        wav = wav[: int(max_seconds * 8000)]
    wav = np.clip(wav, -1.0, 1.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, wav, 8000, subtype="PCM_16")
    return len(wav) / 8000


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    with open(args.source / "utterances.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    held = held_out_speakers(rows, args.seed)
    split_of = {spk: split for split, spks in held.items() for spk in spks}
    for split in ("train", "valid", "test"):
        shutil.rmtree(args.out / split, ignore_errors=True)
    out_rows = []
    for split in ("valid", "test"):  # one utterance per held-out reader, first 6 s
        for spk in held[split]:
            r = next(r for r in rows if r["speaker_id"] == spk)
            dst = args.out / split / spk / f"{r['utt_id']}.flac"
            dur = write_flac(args.source / spk / f"{r['utt_id']}.wav", dst, HELD_OUT[split][1])
            out_rows.append([split, spk, r["gender"], r["utt_id"], f"{dur:.3f}"])
    for r in sorted(rows, key=lambda r: (int(r["speaker_id"]), r["utt_id"])):
        if r["speaker_id"] in split_of:
            continue
        dst = args.out / "train" / r["speaker_id"] / f"{r['utt_id']}.flac"
        dur = write_flac(args.source / r["speaker_id"] / f"{r['utt_id']}.wav", dst)
        out_rows.append(["train", r["speaker_id"], r["gender"], r["utt_id"], f"{dur:.3f}"])
    with open(args.out / "utterances.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["split", "speaker_id", "gender", "utt_id", "duration_s"])
        w.writerows(out_rows)
    shutil.copy(args.source / "SOURCES.md", args.out / "LIBRISPEECH_SOURCES.md")


if __name__ == "__main__":
    main()
