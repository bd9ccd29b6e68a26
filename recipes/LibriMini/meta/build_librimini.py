"""Build the bundled LibriMini speech (recipes/LibriMini/data) from LibriSpeech.

LibriMini is a small, real, redistributable 8 kHz speech set that lets a fresh
clone train and evaluate a separator with no download: 190 LibriSpeech
train-clean-100 readers (one utterance each, CC BY 4.0), split by speaker into
150 train, 20 valid and 20 test speakers, resampled to 8 kHz and stored as
16-bit FLAC (train utterances cut to their first 8 s, valid/test to 6 s).

Usage (from the repository root; the source is the project's shared speech
folder, laid out ``<speaker>/<utt>.wav`` with ``utterances.tsv``)::

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

SPLITS = {"train": (150, 8.0), "valid": (20, 6.0), "test": (20, 6.0)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    with open(args.source / "utterances.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["librispeech_subset"] == "train-clean-100"]
    rows.sort(key=lambda r: int(r["speaker_id"]))
    random.Random(args.seed).shuffle(rows)
    out_rows, start = [], 0
    for split, (n, max_s) in SPLITS.items():
        for r in rows[start : start + n]:
            wav, sr = sf.read(args.source / r["speaker_id"] / f"{r['utt_id']}.wav", dtype="float32")
            wav = resample_poly(wav, 1, sr // 8000)[: int(max_s * 8000)]
            wav = np.clip(wav, -1.0, 1.0)
            dst = args.out / split / r["speaker_id"] / f"{r['utt_id']}.flac"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dst, wav, 8000, subtype="PCM_16")
            out_rows.append([split, r["speaker_id"], r["gender"], r["utt_id"], f"{len(wav) / 8000:.3f}"])
        start += n
    with open(args.out / "utterances.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["split", "speaker_id", "gender", "utt_id", "duration_s"])
        w.writerows(out_rows)
    shutil.copy(args.source / "SOURCES.md", args.out / "LIBRISPEECH_SOURCES.md")


if __name__ == "__main__":
    main()
