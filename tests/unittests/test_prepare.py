"""Tests of ``sb_mamba.dataio.manifests`` on tiny real-layout datasets.

Authors
-------
 * sb_mamba developers
"""

import csv
import logging
import os

import pytest
import soundfile as sf
import torch

from sb_mamba.audio import AudioError
from sb_mamba.dataio.manifests import (
    prepare_echo2mix,
    prepare_librimix,
    prepare_wham,
    prepare_whamr,
    prepare_wsj0mix,
)
from tests.helpers import (
    make_echo2mix,
    make_librimix,
    make_wham,
    make_whamr,
    make_wsj0mix,
)

TINY = (1, 1, 1)


def read_csvs(csvs):
    out = {}
    for split, path in csvs.items():
        with open(path, newline="") as f:
            out[split] = list(csv.DictReader(f))
    return out


def check_csvs(csvs, columns, n_rows, sample_rate, duration=1.0):
    """Columns, row counts, absolute existing paths, durations, unique IDs."""
    assert sorted(csvs) == ["test", "train", "valid"]
    tables = read_csvs(csvs)
    for split, rows in tables.items():
        with open(csvs[split]) as f:
            assert f.readline().strip() == ",".join(columns)
        assert len(rows) == n_rows[split], split
        assert len({r["ID"] for r in rows}) == len(rows)
        for row in rows:
            assert float(row["duration"]) == pytest.approx(duration, abs=1e-3)
            for col in columns[2:]:
                assert os.path.isabs(row[col]) and os.path.isfile(row[col]), row[col]
    row = tables["train"][0]
    assert sf.info(row["mix_wav"]).samplerate == sample_rate
    return tables


def check_sum(row, parts):
    """mix == sum of ``parts`` (up to the 16-bit rounding of each file)."""
    mix, _ = sf.read(row["mix_wav"])
    total = sum(sf.read(row[p])[0] for p in parts)
    assert abs(mix).max() > 1e-3
    assert torch.allclose(torch.from_numpy(mix), torch.from_numpy(total), atol=1.5e-4)


@pytest.fixture(scope="module")
def wsj(tmp_path_factory):
    return make_wsj0mix(tmp_path_factory.mktemp("wsj"))


def test_wsj0mix(wsj, tmp_path):
    csvs = prepare_wsj0mix(wsj, tmp_path)
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    tables = check_csvs(csvs, cols, {"train": 4, "valid": 2, "test": 2}, 8000)
    row = tables["test"][0]
    assert row["mix_wav"].startswith(str(wsj / "wav8k" / "min" / "tt" / "mix"))
    assert row["s2_wav"] == row["mix_wav"].replace("/mix/", "/s2/")
    check_sum(row, ["s1_wav", "s2_wav"])
    # the wsj0-mix root is accepted too
    tables2 = read_csvs(prepare_wsj0mix(wsj.parent, tmp_path / "root"))
    assert tables2["train"] == tables["train"]


def test_wsj0mix_3spk(tmp_path):
    data = make_wsj0mix(tmp_path, num_spks=3, n=(2, 1, 1))
    csvs = prepare_wsj0mix(data, tmp_path / "csv", num_spks=3)
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "s3_wav"]
    tables = check_csvs(csvs, cols, {"train": 2, "valid": 1, "test": 1}, 8000)
    check_sum(tables["train"][1], ["s1_wav", "s2_wav", "s3_wav"])
    with pytest.raises(ValueError, match="3speakers but num_spks=2"):
        prepare_wsj0mix(data, tmp_path / "csv2", num_spks=2)


def test_wham(tmp_path):
    data = make_wham(tmp_path, n=(2, 1, 1))
    rows = {"train": 2, "valid": 1, "test": 1}
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    tables = check_csvs(prepare_wham(data, tmp_path / "both"), cols, rows, 8000)
    assert "/mix_both/" in tables["train"][0]["mix_wav"]
    check_sum(tables["train"][0], ["s1_wav", "s2_wav", "noise_wav"])
    clean = prepare_wham(data, tmp_path / "clean", mix="mix_clean")
    tables = check_csvs(clean, cols[:-1], rows, 8000)
    check_sum(tables["valid"][0], ["s1_wav", "s2_wav"])
    with pytest.raises(ValueError, match="mix must be one of"):
        prepare_wham(data, tmp_path / "x", mix="mix_single")


def test_whamr(tmp_path):
    data = make_whamr(tmp_path, n=(2, 1, 1))
    rows = {"train": 2, "valid": 1, "test": 1}
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    reverb = check_csvs(prepare_whamr(data, tmp_path / "r", targets="reverb"), cols, rows, 8000)
    row = reverb["test"][0]
    assert "/mix_both_reverb/" in row["mix_wav"] and "/s1_reverb/" in row["s1_wav"]
    check_sum(row, ["s1_wav", "s2_wav", "noise_wav"])
    # default: reverberant mixture, anechoic targets, in every split
    anechoic = check_csvs(prepare_whamr(data, tmp_path / "a"), cols, rows, 8000)
    for split_rows in anechoic.values():
        assert all("/s2_anechoic/" in r["s2_wav"] for r in split_rows)
    clean = prepare_whamr(data, tmp_path / "c", mix="mix_clean_anechoic")
    check_sum(check_csvs(clean, cols[:-1], rows, 8000)["train"][1], ["s1_wav", "s2_wav"])


def test_librimix(tmp_path):
    data = make_librimix(tmp_path, n=(2, 1, 1))
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    tables = check_csvs(
        prepare_librimix(data, tmp_path / "a"), cols, {"train": 2, "valid": 1, "test": 1}, 8000
    )
    assert "/train-360/mix_clean/" in tables["train"][0]["mix_wav"]
    check_sum(tables["train"][0], ["s1_wav", "s2_wav"])
    # Libri2Mix folder given directly, both train sets, noisy mixtures
    csvs = prepare_librimix(data / "Libri2Mix", tmp_path / "b", train_set="both", mix="mix_both")
    tables = check_csvs(csvs, cols + ["noise_wav"], {"train": 4, "valid": 1, "test": 1}, 8000)
    assert {r["ID"].split("_")[0] for r in tables["train"]} == {"train-100", "train-360"}
    check_sum(tables["test"][0], ["s1_wav", "s2_wav", "noise_wav"])


def test_echo2mix(tmp_path):
    data = make_echo2mix(tmp_path, n=(2, 1, 1))
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    tables = check_csvs(
        prepare_echo2mix(data, tmp_path / "csv"), cols, {"train": 2, "valid": 1, "test": 1}, 16000
    )
    row = tables["valid"][0]
    assert row["ID"].startswith("val_record000_room0_")
    assert row["s2_wav"].endswith("spk2_reverb.wav")
    check_sum(row, ["s1_wav", "s2_wav"])


def test_missing_and_empty_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        prepare_wsj0mix(missing, tmp_path / "csv")
    assert str(missing) in str(err.value) and "wav8k|wav16k" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty") as err:
        prepare_librimix(tmp_path / "empty", tmp_path / "csv")
    assert str(tmp_path / "empty") in str(err.value)
    assert not (tmp_path / "csv").exists()


def test_wrong_layout(tmp_path):
    data = make_wsj0mix(tmp_path, sample_rate=16000, n=TINY)  # only wav16k
    with pytest.raises(FileNotFoundError) as err:
        prepare_wsj0mix(data, tmp_path / "csv")
    msg = str(err.value)
    assert f"Expected WSJ0-2mix at {data / 'wav8k' / 'min' / 'tr' / 'mix'}" in msg
    assert "{tr,cv,tt}/{mix,s1,s2}" in msg and "wav16k" in msg
    prepare_wsj0mix(data, tmp_path / "csv16", sample_rate=16000)  # the fix works
    with pytest.raises(FileNotFoundError, match="Expected Echo2Mix at .*train"):
        prepare_echo2mix(data, tmp_path / "csv")


def test_missing_source(tmp_path):
    data = make_wham(tmp_path, n=TINY)
    s2 = next((data / "wav8k" / "min" / "cv" / "s2").glob("*.wav"))
    s2.unlink()
    with pytest.raises(FileNotFoundError, match="is missing") as err:
        prepare_wham(data, tmp_path / "csv")
    assert str(s2) in str(err.value)


def test_corrupt_and_wrong_rate(tmp_path):
    data = make_librimix(tmp_path, n=TINY, train_sets=("train-360",))
    s1 = next((data / "Libri2Mix" / "wav8k" / "min" / "dev" / "s1").glob("*.wav"))
    s1.write_bytes(b"not a wav file" * 20)
    with pytest.raises(AudioError, match="Cannot decode") as err:
        prepare_librimix(data, tmp_path / "csv")
    assert str(s1) in str(err.value)
    prepare_librimix(data, tmp_path / "nocheck", check_audio=False)  # mixtures only
    sf.write(s1, torch.zeros(16000).numpy(), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="16000 Hz but sample_rate=8000") as err:
        prepare_librimix(data, tmp_path / "csv")
    assert str(s1) in str(err.value) and "resample" in str(err.value)
    sf.write(s1, torch.zeros(0).numpy(), 8000, subtype="PCM_16")  # header only
    with pytest.raises(AudioError, match="is empty") as err:
        prepare_librimix(data, tmp_path / "csv")
    assert str(s1) in str(err.value)
    assert not (tmp_path / "csv" / "train.csv").exists()


def test_skip_prep_and_rerun(wsj, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="unset skip_prep"):
        prepare_wsj0mix(wsj, tmp_path, skip_prep=True)
    csvs = prepare_wsj0mix(wsj, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in csvs.values()}
    assert prepare_wsj0mix("/no/such/folder", tmp_path, skip_prep=True) == csvs
    with caplog.at_level(logging.INFO, logger="sb_mamba.dataio.manifests"):
        assert prepare_wsj0mix(wsj, tmp_path) == csvs
    assert "already prepared" in caplog.text
    assert stamps == {p: p.stat().st_mtime_ns for p in csvs.values()}
    prepare_wsj0mix(wsj, tmp_path, mode="min", check_audio=False)  # still skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in csvs.values()}
    # other options: prepared again (here: a mode whose folder is absent)
    with pytest.raises(FileNotFoundError, match="wav8k/max/tr/mix"):
        prepare_wsj0mix(wsj, tmp_path, mode="max")
