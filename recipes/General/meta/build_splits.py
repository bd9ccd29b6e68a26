"""Build the General recipe's fixed splits (recipes/General/meta/splits.json).

The General recipe trains on LibriMini's train readers plus the speechocean762
speakers of ``shared/data/speech-l2`` and tests on speakers, noise recordings
and rooms that training never uses. This script makes that split once; the
JSON it writes is committed and never changes, so figures stay comparable:

* ``speech-l2``: a speaker-level split, stratified by age (children under 16
  and adults alike in each split): 20 test speakers (10 children), 10 valid
  speakers (5 children), the other 95 train;
* ``noise``: whole recordings held out (every clip of a ``source_id`` of
  ``noise.tsv`` goes to one split): a coffee shop, a train, an exercise bike,
  city traffic and rain are test-only;
* ``rir``: measured room responses held out by source position, in both rooms
  (3 of 10 positions of Surrey room A, 2 of 7 of the BBC listening room);
* simulated rooms: the seeds of the train and test banks (disjoint rooms).

Usage (from the repository root)::

    python recipes/General/meta/build_splits.py ../shared/data

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

L2_HELD_OUT = {"test": 10, "valid": 5}  # speakers per age group (children, adults)
NOISE_TEST_SOURCES = [
    "blanket_coffee_shop",
    "blanket_train",
    "spcmd_exercise_bike",
    "ambeng_city_traffic_hum",
    "jtg_rain",
]
RIR_TEST = [
    "surreyA_azm090_L",
    "surreyA_azp060_L",
    "surreyA_azp090_L",
    "bbcLR_Bm045_R",
    "bbcLR_Mp180_R",
]
SIMULATED = {"train": {"seed": 1234, "rooms": 100}, "test": {"seed": 9001, "rooms": 20}}


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def l2_split(rows, seed=1234):
    """Speaker-level split of speech-l2, stratified by age (< 16: children)."""
    age = {r["speaker"]: int(r["age"]) for r in rows}
    rng = np.random.default_rng(seed)
    split = {"train": [], "valid": [], "test": []}
    for group in (
        [s for s in sorted(age) if age[s] < 16],
        [s for s in sorted(age) if age[s] >= 16],
    ):
        order = [group[i] for i in rng.permutation(len(group))]
        n_test, n_valid = L2_HELD_OUT["test"], L2_HELD_OUT["valid"]
        split["test"] += order[:n_test]
        split["valid"] += order[n_test : n_test + n_valid]
        split["train"] += order[n_test + n_valid :]
    return {k: sorted(v) for k, v in split.items()}


def main(shared):
    shared = Path(shared)
    l2 = l2_split(read_tsv(shared / "speech-l2" / "utterances.tsv"))
    clips = [r["clip_id"] for r in read_tsv(shared / "noise" / "noise.tsv")]
    source = {r["clip_id"]: r["source_id"] for r in read_tsv(shared / "noise" / "noise.tsv")}
    noise = {
        "train": sorted(c for c in clips if source[c] not in NOISE_TEST_SOURCES),
        "test": sorted(c for c in clips if source[c] in NOISE_TEST_SOURCES),
    }
    rirs = [r["rir_id"] for r in read_tsv(shared / "rir" / "rir.tsv")]
    if missing := set(RIR_TEST) - set(rirs):
        raise SystemExit(f"RIRs {sorted(missing)} are not in {shared / 'rir'}.")
    rir = {"train": sorted(set(rirs) - set(RIR_TEST)), "test": sorted(RIR_TEST)}
    out = Path(__file__).with_name("splits.json")
    out.write_text(
        json.dumps(
            {"speech-l2": l2, "noise": noise, "rir": rir, "simulated_rooms": SIMULATED}, indent=1
        )
        + "\n"
    )
    print(
        f"Wrote {out}: speech-l2 {[len(v) for v in l2.values()]} train/valid/test speakers, "
        f"noise {len(noise['train'])}/{len(noise['test'])} clips, "
        f"RIRs {len(rir['train'])}/{len(rir['test'])}."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shared", help="the shared data folder (speech-l2/, noise/, rir/)")
    main(parser.parse_args().shared)
