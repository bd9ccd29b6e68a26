"""The General recipe's data: per-mixture conditions, single talkers, the
silence-aware loss, the fixed split and the prepared test sets.

Authors
-------
 * sb_mamba developers
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sb_mamba.audio import read_audio
from sb_mamba.dataio.general import CONDITIONS, condition_dataset, prepare_general
from sb_mamba.dataio.mixing import DynamicMixingDataset, ReverbDynamicMixing
from sb_mamba.errors import UserError
from sb_mamba.metrics import (
    output_level_ratio,
    pit_si_snr_loss,
    pit_si_snr_silence_loss,
    si_snr,
)
from tests.helpers import (
    LIBRIMINI_DATA,
    NOISE_DIR,
    ROOT,
    SAMPLES,
    SPEECH_DIR,
    make_shared_data,
)

SPLITS = ROOT / "recipes" / "General" / "meta" / "splits.json"


# ------------------------------------------------------------------ the loss
def test_silence_loss_is_si_snr_for_two_talkers():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 800, 2, generator=gen)
    est = targets.flip(-1) + 0.3 * torch.randn(3, 800, 2, generator=gen)
    assert torch.allclose(pit_si_snr_silence_loss(targets, est), pit_si_snr_loss(targets, est))


def test_silence_loss_scores_a_lone_talker_by_the_quiet_output():
    gen = torch.Generator().manual_seed(1)
    talker = torch.randn(1, 800, 1, generator=gen)
    targets = torch.cat([talker, torch.zeros_like(talker)], -1)
    split = torch.cat([talker, talker], -1) / 2  # the voice over both outputs
    kept = torch.cat([torch.zeros_like(talker), talker], -1)  # in output 2 only (PIT)
    leak = torch.cat([0.1 * talker, talker], -1)  # -20 dB in the other output
    loss = {
        name: float(pit_si_snr_silence_loss(targets, x))
        for name, x in (("split", split), ("kept", kept), ("leak", leak))
    }
    assert loss["kept"] < loss["leak"] < loss["split"]
    # leak: SI-SNR of the louder output is perfect; the other is 20 dB below
    # the speech: -(si_snr + (-10 log10(0.01 + 0.001))) / 2
    expected = -(float(si_snr(talker[..., 0], talker[..., 0])) + 10 * np.log10(1 / 0.011)) / 2
    assert loss["leak"] == pytest.approx(expected, abs=1e-3)
    # SI-SNR against a silent target is undefined; this loss stays finite,
    # with finite gradients, even for an all-zero estimate
    est = torch.zeros(1, 800, 2, requires_grad=True)
    value = pit_si_snr_silence_loss(targets, est + 1e-3 * torch.cat([talker, talker], -1))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(est.grad).all()


def test_output_level_ratio():
    x = torch.randn(2, 400, 2, generator=torch.Generator().manual_seed(2))
    x[1, :, 0] *= 0.1  # the first output 20 dB down
    e = x.double().pow(2).sum(1)  # [B, S]
    ref = 10 * torch.log10(e.max(-1).values / e.min(-1).values)
    assert torch.allclose(output_level_ratio(x), ref, atol=1e-6)
    assert float(output_level_ratio(x)[1]) > 15  # 20 dB, give or take the two draws


# ---------------------------------------------------- per-mixture conditions
def test_single_talkers_have_silent_targets_and_keep_their_level():
    ds = DynamicMixingDataset(
        SPEECH_DIR, epoch_size=8, segment_seconds=1.0, single_prob=1.0, return_meta=True
    )
    for i in range(4):
        item = ds[i]
        assert item["meta"]["silent"] == [1]
        assert not item["s2_sig"].any()
        assert torch.allclose(item["mix_sig"], item["s1_sig"])
        assert 10 * np.log10(float(item["s1_sig"].pow(2).mean())) == pytest.approx(
            -25 + item["meta"]["gains_db"][0], abs=3.0
        )  # REF_RMS_DB + gain, up to padding


def test_noise_prob_mixes_clean_and_noisy_items_that_still_collate():
    ds = DynamicMixingDataset(
        SPEECH_DIR,
        epoch_size=40,
        segment_seconds=1.0,
        noise_folder=NOISE_DIR,
        noise_prob=0.5,
        return_meta=True,
    )
    noisy = [bool(ds[i]["noise_sig"].any()) for i in range(40)]
    assert 8 < sum(noisy) < 32  # about half
    for i in range(40):
        item = ds[i]
        s = item["s1_sig"] + item["s2_sig"]
        assert torch.allclose(item["mix_sig"], s + item["noise_sig"], atol=1e-6)
        if noisy[i]:
            snr = 10 * np.log10(float(s.pow(2).sum() / item["noise_sig"].pow(2).sum()))
            assert snr == pytest.approx(item["meta"]["snr_db"], abs=0.01)
    with pytest.raises(UserError, match="noise_prob"):
        DynamicMixingDataset(SPEECH_DIR, noise_prob=1.5)


def test_reverb_prob_and_several_banks(tmp_path):
    from sb_mamba.dataio.rir_bank import make_rir_bank

    make_rir_bank(tmp_path / "sim", 2, ranges={"rt60": [0.3, 0.3]}, num_mics=1)
    ds = ReverbDynamicMixing(
        SPEECH_DIR,
        epoch_size=40,
        segment_seconds=1.0,
        reverb_prob=0.5,
        rir_bank=[SAMPLES / "rir", tmp_path / "sim"],
        reverb_target="reverberant",
        return_meta=True,
    )
    metas = [ds[i]["meta"] for i in range(40)]
    wet = [m for m in metas if "rirs" in m]
    assert 8 < len(wet) < 32
    assert {m["bank"] for m in wet} == {0, 1}  # measured and simulated rooms
    for i, m in enumerate(metas):
        item = ds[i]
        assert torch.allclose(item["mix_sig"], item["s1_sig"] + item["s2_sig"], atol=1e-6)
        if "rirs" not in m:  # a dry item's targets are the dry crops
            dry = DynamicMixingDataset(SPEECH_DIR, epoch_size=40, segment_seconds=1.0)
            assert torch.allclose(item["s1_sig"], dry[i]["s1_sig"], atol=1e-6)
            break


# -------------------------------------------------------------- the split
def test_the_committed_split_holds_out_speakers_noise_and_rooms():
    split = json.loads(SPLITS.read_text())
    l2 = split["speech-l2"]
    assert [len(l2[k]) for k in ("train", "valid", "test")] == [95, 10, 20]
    assert not set(l2["train"]) & set(l2["valid"]) and not set(l2["train"]) & set(l2["test"])
    assert not set(l2["valid"]) & set(l2["test"])
    for kind in ("noise", "rir"):
        assert split[kind]["test"] and not set(split[kind]["train"]) & set(split[kind]["test"])
    # whole noise recordings are held out: no test clip shares a recording with a train clip
    stem = {c.rsplit("_", 1)[0] for c in split["noise"]["test"]}
    assert not stem & {c.rsplit("_", 1)[0] for c in split["noise"]["train"]}
    rooms = split["simulated_rooms"]
    assert rooms["train"]["seed"] != rooms["test"]["seed"]


# ----------------------------------------------------- prepared test sets
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("general")
    data, splits = make_shared_data(root)
    out = root / "prep"
    prepare_general(
        data,
        out,
        librimini_folder=LIBRIMINI_DATA,
        splits=splits,
        n_valid=3,
        n_test=4,
        segment_seconds=1.0,
    )
    return out, json.loads(splits.read_text())


def _rows(csv_file):
    with open(csv_file, newline="") as f:
        return list(csv.DictReader(f))


def test_prepared_sets_use_only_held_out_speakers_noise_and_rooms(prepared):
    out, split = prepared
    for name in ["valid", "test", *[f"test_{c}" for c in CONDITIONS]]:
        assert len(_rows(out / f"{name}.csv")) == (3 if name == "valid" else 4)
    train = {p.name for p in (out / "links" / "speech" / "train").iterdir()}
    for held_out in ("valid", "test"):
        spks = {p.name for p in (out / "links" / "speech" / held_out).iterdir()}
        assert spks and not spks & train
    assert {p.stem for p in (out / "links" / "noise" / "test").glob("*.wav")} == set(
        split["noise"]["test"]
    )
    ds = condition_dataset(out, "reverb", 4, segment_seconds=1.0)
    assert {Path(b.folder).name for b in ds.banks} == {"test"}  # links/rir/test, rooms/test
    metas = [ds.draw(i) for i in range(4)]
    assert all("rirs" in m for m in metas)
    test_rirs = set(split["rir"]["test"]) | {r for room in ds.banks[1].rooms for r in room}
    assert all(set(m["rirs"]) <= test_rirs for m in metas)


def test_condition_sets_hold_what_they_say(prepared):
    out, _ = prepared
    for row in _rows(out / "test_single.csv"):  # one talker: s2 is silence
        assert not read_audio(row["s2_wav"]).any() and read_audio(row["s1_wav"]).any()
    for row in _rows(out / "test_noisy.csv"):
        mix, noise = read_audio(row["mix_wav"]), read_audio(row["noise_wav"])
        speech = read_audio(row["s1_wav"]) + read_audio(row["s2_wav"])
        assert torch.allclose(mix, speech + noise, atol=1e-4)
        snr = 10 * torch.log10(speech.pow(2).sum() / noise.pow(2).sum())
        assert -6.1 < float(snr) < 3.1
    for row in _rows(out / "test_clean.csv"):  # LibriMini's test readers, dry
        assert "noise_wav" not in row
        assert all(read_audio(row[k]).any() for k in ("s1_wav", "s2_wav"))
