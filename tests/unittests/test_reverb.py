"""Room simulation, RIR banks and reverberant dynamic mixing.

Measured properties: RT60 of simulated RIRs (pyroomacoustics' own
``measure_rt60``) within 20 % of the target; speaker levels and SNR of the
mixtures within 0.1 dB of the drawn ones; targets time-aligned with the
reverberant mixture (cross-correlation peak at lag 0 +- 1).

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

import numpy as np
import pyroomacoustics as pra
import pytest
import torch
from scipy.signal import correlate

from sb_mamba.dataio.mixing import (
    REF_RMS_DB,
    DynamicMixingDataset,
    ReverbDynamicMixing,
    check_remix,
)
from sb_mamba.dataio.rir_bank import RirBank, index_rir_folder, make_rir_bank
from sb_mamba.dataio.room import draw_room, early_rir, room_ranges, simulate_room
from sb_mamba.errors import UserError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SPEECH, NOISE, RIRS = SAMPLES / "speech_8k", SAMPLES / "noise_8k", SAMPLES / "rir"
SHORT = {"rt60": [0.2, 0.3]}  # short RIRs: fast simulation


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """A 3-room simulated bank (one worker)."""
    folder = tmp_path_factory.mktemp("bank")
    make_rir_bank(folder, 3, 8000, seed=5, ranges=SHORT, sources_per_room=3)
    return folder


def lag_of_peak(x, ref):
    """Lag (samples) of the cross-correlation peak of ``x`` against ``ref``."""
    c = correlate(x, ref, mode="full", method="fft")
    return int(np.argmax(c)) - (len(ref) - 1)


@pytest.mark.parametrize("rt60", [0.3, 0.6, 0.9])
def test_measured_rt60_within_20_percent(rt60):
    # Large rooms have fewer image sources per second of RIR: the fastest
    # WHAMR! rooms to simulate; RT60 fixed to the target.
    ranges = {"length": [9, 10], "width": [9, 10], "height": [3.8, 4], "rt60": [rt60, rt60]}
    params = draw_room(np.random.default_rng(int(rt60 * 10)), ranges, num_sources=2, num_mics=1)
    out = simulate_room(params, 8000)
    for h in out["rirs"][:, 0]:
        measured = pra.experimental.measure_rt60(h, fs=8000, decay_db=30)
        print(
            f"RT60 target {rt60:.2f} s, measured {measured:.3f} s "
            f"({100 * (measured / rt60 - 1):+.1f} %)"
        )
        assert abs(measured / rt60 - 1) <= 0.2
    assert abs(out["rt60_measured"] / rt60 - 1) <= 0.2


def test_room_draws_follow_the_ranges():
    r = room_ranges()
    for seed in range(20):
        room = draw_room(np.random.default_rng(seed))
        dims, mics, srcs = np.array(room["room"]), np.array(room["mics"]), np.array(room["sources"])
        assert r["length"][0] <= dims[0] <= r["length"][1] and 3 <= dims[2] <= 4
        assert 0.1 <= room["rt60"] <= 1.0
        assert np.all(srcs >= 0.3) and np.all(srcs <= dims - 0.3)
        dist = np.linalg.norm(srcs - mics.mean(0), axis=1)
        assert np.all((dist >= 1.0 - 1e-9) & (dist <= np.hypot(2.0, 0.3) + 1e-9))
        assert 0.15 - 1e-9 <= np.linalg.norm(mics[0] - mics[1]) <= 0.17 + 1e-9
    assert draw_room(np.random.default_rng(3)) == draw_room(np.random.default_rng(3))
    with pytest.raises(ValueError, match="Unknown room range 'rt'"):
        room_ranges({"rt": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        room_ranges({"rt60": [0.6, 0.2]})


def test_direct_path_is_the_start_of_the_full_rir():
    params = draw_room(np.random.default_rng(1), SHORT, num_sources=2, num_mics=1)
    out = simulate_room(params, 8000, calibrate=0)
    for k in range(2):
        full, direct, d = out["rirs"][k, 0], out["direct"][k, 0], out["direct_index"][k, 0]
        assert np.argmax(np.abs(full)) == d == np.argmax(np.abs(direct))
        dist = np.linalg.norm(np.array(params["sources"][k]) - params["mics"][0])
        assert abs(d - (dist / 343.0 * 8000 + 20)) <= 1  # + 40 taps of sinc at 16 kHz
        assert len(early_rir(full, d, 8000, 50.0)) == d + 401


def test_bank_same_for_any_number_of_workers_and_reused(tmp_path, bank):
    csv2 = make_rir_bank(
        tmp_path / "b2", 3, 8000, seed=5, ranges=SHORT, sources_per_room=3, num_workers=2
    )
    assert csv2.read_bytes() == (bank / "rir_bank.csv").read_bytes()
    for f in sorted((bank / "rirs").glob("*.wav")):
        assert f.read_bytes() == (tmp_path / "b2" / "rirs" / f.name).read_bytes(), f.name
    stamp = csv2.stat().st_mtime_ns
    make_rir_bank(tmp_path / "b2", 3, 8000, seed=5, ranges=SHORT, sources_per_room=3)
    assert csv2.stat().st_mtime_ns == stamp  # same options: reused, not re-made
    rows = RirBank(bank, 8000).rows
    assert len(rows) == 9 and {r["kind"] for r in rows.values()} == {"simulated"}
    for r in rows.values():  # the CSV records what was asked and what was measured
        assert abs(float(r["rt60_measured"]) / float(r["rt60_target"]) - 1) <= 0.2


def test_levels_snr_and_alignment_from_a_bank(bank):
    for target in ("anechoic", "early", "reverberant"):
        ds = ReverbDynamicMixing(
            SPEECH,
            rir_bank=bank,
            reverb_target=target,
            noise_folder=NOISE,
            epoch_size=3,
            segment_seconds=2.0,
            gain_db_range=(-5, 5),
            return_meta=True,
        )
        for idx in range(3):
            spec = ds.draw(idx)
            out = ds.render(spec)
            images, noise, n = out["images"], out["noise"], [s["length"] for s in spec["sources"]]
            level = 10 * np.log10(np.sum(images**2, axis=1) / n)  # defined level
            expected = REF_RMS_DB + np.array(spec["gains_db"]) + 20 * np.log10(out["scale"])
            assert np.allclose(level, expected, atol=0.1)
            snr = 10 * np.log10(np.sum(images.sum(0) ** 2) / np.sum(noise**2))
            assert abs(snr - spec["snr_db"]) < 0.1
            assert np.allclose(out["mix"], images.sum(0) + noise)
            assert len({ds.bank.info(r)["room_id"] for r in spec["rirs"]}) == 1  # one room
            for k in range(2):
                assert abs(lag_of_peak(out["mix"], out["targets"][k])) <= 1
                assert abs(lag_of_peak(images[k], out["targets"][k])) <= 1
        item = ds[0]
        assert item["mix_sig"].dtype == torch.float32 and item["s2_sig"].shape == (16000,)
        assert item["meta"]["rirs"] == ds.draw(0)["rirs"]


def test_measured_rirs_are_a_bank():
    rows = index_rir_folder(RIRS)
    assert {r["room_id"] for r in rows} == {
        "Univ. of Surrey Room A (reverberant, Hummersone BRIR set)"
    } and rows[0]["license"] == "MIT"
    assert all(0.2 < r["rt60_measured"] < 0.4 for r in rows)  # nominal T60 0.32 s
    ds = ReverbDynamicMixing(SPEECH, rir_bank=RIRS, epoch_size=2, segment_seconds=1.0)
    spec = ds.draw(1)
    out = ds.render(spec)
    assert sorted(spec["rirs"]) == sorted(r["rir_id"] for r in rows)
    for k in range(2):
        assert abs(lag_of_peak(out["mix"], out["targets"][k])) <= 1


def test_simulated_room_per_item_and_determinism():
    kw = dict(
        epoch_size=2, segment_seconds=0.5, room_ranges={"rt60": [0.15, 0.2]}, return_meta=True
    )
    a, b = ReverbDynamicMixing(SPEECH, **kw), ReverbDynamicMixing(SPEECH, **kw)
    item = a[1]
    assert set(item["meta"]["room"]) == {"room", "rt60", "mics", "sources"}
    assert all(torch.equal(item[k], b[1][k]) for k in ("mix_sig", "s1_sig", "s2_sig"))
    a.set_epoch(1)
    assert not torch.equal(a[1]["mix_sig"], item["mix_sig"])


def test_without_reverb_it_is_dynamic_mixing():
    kw = dict(epoch_size=3, segment_seconds=1.0, noise_folder=NOISE)
    dry, plain = (
        ReverbDynamicMixing(SPEECH, use_reverb=False, **kw),
        DynamicMixingDataset(SPEECH, **kw),
    )
    for i in range(3):
        assert all(torch.equal(dry[i][k], plain[i][k]) for k in ("mix_sig", "s1_sig", "noise_sig"))


def test_clear_errors(tmp_path, bank):
    with pytest.raises(FileNotFoundError, match="sb-mamba make-rir-bank"):
        ReverbDynamicMixing(SPEECH, rir_bank=tmp_path / "no_bank", epoch_size=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReverbDynamicMixing(tmp_path / "no_speech", rir_bank=bank, epoch_size=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index_rir_folder(tmp_path / "nothing")
    with pytest.raises(ValueError, match="reverb_target must be one of"):
        ReverbDynamicMixing(SPEECH, rir_bank=bank, reverb_target="dry", epoch_size=2)
    with pytest.raises(UserError, match="sources_per_room >= num_spks"):
        RirBank(bank, 8000, min_sources=4)
    with pytest.raises(UserError, match="num_mics must be >= 1"):
        make_rir_bank(tmp_path / "bank0", 2, num_mics=0)
    ds = ReverbDynamicMixing(SPEECH, rir_bank=bank, epoch_size=2)
    with pytest.raises(UserError, match="use_speedperturb to False"):
        check_remix(ds, speed_perturb=True)
    check_remix(ds, speed_perturb=False)
    ds.reverb_target = "reverberant"  # mixture == sum of the targets (+ noise): allowed
    check_remix(ds, speed_perturb=True, rand_shift=True)
