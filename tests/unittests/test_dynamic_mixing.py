"""Unit tests of dynamic mixing on the bundled real speech (and noise).

Authors
-------
 * sb_mamba developers
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset

from sb_mamba import audio
from sb_mamba.audio import AudioError, read_audio, write_audio
from sb_mamba.dataio.mixing import DynamicMixingDataset
from sb_mamba.dataio.speakers import index_speakers, prepare_cache, split_speakers

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SPEECH = SAMPLES / "speech_8k"
SPEAKERS = ["19", "26", "27", "32"]  # 19 is 1.965 s long, the others 4 s


def make_ds(**kwargs):
    opts = dict(speaker_folder=SPEECH, epoch_size=6, segment_seconds=2.0, return_meta=True)
    return DynamicMixingDataset(**{**opts, **kwargs})


def energy_db(x):
    return 10 * np.log10(np.sum(np.asarray(x, dtype=np.float64) ** 2))


def same_items(a, b):
    keys = [k for k in a if k.endswith("_sig")]
    return a["id"] == b["id"] and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
    """The bundled real noise, or pink-ish noise written to a temporary folder."""
    if list((SAMPLES / "noise_8k").glob("*.wav")):
        return SAMPLES / "noise_8k"
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((0.7, 4.0)):  # a short one is looped
        spec = np.fft.rfft(rng.standard_normal(int(seconds * 8000)))
        pink = np.fft.irfft(spec / np.sqrt(np.arange(1, len(spec) + 1)))
        write_audio(folder / f"n{i}.wav", 0.3 * pink / np.abs(pink).max(), 8000)
    return folder


def test_items_distinct_speakers_and_collate():
    ds = make_ds(num_spks=3)
    assert len(ds) == 6 and ds.speakers == SPEAKERS
    for idx in range(len(ds)):
        item = ds[idx]
        spks = item["meta"]["speakers"]
        assert len(set(spks)) == 3
        assert [Path(f).parent.name for f in item["meta"]["files"]] == spks
        sources = torch.stack([item[f"s{k}_sig"] for k in (1, 2, 3)])
        assert sources.shape == (3, 16000) and item["mix_sig"].dtype == torch.float32
        assert torch.allclose(item["mix_sig"], sources.sum(0), atol=1e-6)
        assert item["mix_sig"].abs().max() <= 0.9 + 1e-6
    batch = PaddedBatch([ds[0], ds[1]])
    assert batch.mix_sig.data.shape == (2, 16000) and batch.s3_sig.data.shape == (2, 16000)
    assert len(batch.id) == 2 and batch.meta[1] == ds[1]["meta"]  # a list of dicts
    plain = PaddedBatch([make_ds(return_meta=False)[i] for i in range(2)])
    assert plain.s2_sig.data.shape == (2, 16000) and not hasattr(plain, "meta")


def test_relative_levels_match_drawn_gains():
    ds = make_ds(num_spks=3, segment_seconds=3.0, gain_db_range=(-5.0, 5.0), peak=0.05)
    padded = 0
    for idx in range(len(ds)):
        item = ds[idx]
        meta = item["meta"]
        levels = []
        for k, (begin, end) in enumerate(meta["spans"]):
            src = item[f"s{k + 1}_sig"].numpy()
            assert not src[:begin].any() and not src[end:].any()  # zero padding
            levels.append(energy_db(src[begin:end]) - 10 * np.log10(end - begin))
            padded += end - begin < 24000
        assert meta["scale"] < 1 and item["mix_sig"].abs().max() <= 0.05 + 1e-7
        rel = np.array(levels) - levels[0]
        drawn = np.array(meta["gains_db"]) - meta["gains_db"][0]
        assert np.abs(rel - drawn).max() < 0.1
    assert padded > 0  # speaker 19 (1.965 s) was drawn and padded
    assert "19" not in make_ds(min_seconds=2.0).speakers


@pytest.mark.parametrize("segment_seconds, peak", [(1.0, 0.9), (5.0, 0.1)])  # 5 s: looped
def test_snr_matches_drawn(noise_folder, segment_seconds, peak):
    ds = make_ds(
        noise_folder=noise_folder, segment_seconds=segment_seconds, peak=peak, epoch_size=4
    )
    snrs = []
    for idx in range(len(ds)):
        item = ds[idx]
        speech = item["s1_sig"] + item["s2_sig"]
        snr = energy_db(speech) - energy_db(item["noise_sig"])
        assert abs(snr - item["meta"]["snr_db"]) < 0.1
        assert -6.0 <= item["meta"]["snr_db"] <= 3.0
        assert torch.allclose(item["mix_sig"], speech + item["noise_sig"], atol=1e-6)
        assert item["mix_sig"].abs().max() <= peak + 1e-6
        snrs.append(snr)
    assert np.ptp(snrs) > 0.5


def test_determinism_per_seed_epoch_and_index():
    a, b = make_ds(), make_ds()
    assert all(same_items(a[i], b[i]) for i in range(len(a)))
    assert not same_items(a[2], a[3])
    a.set_epoch(1)
    assert not same_items(a[3], b[3])
    a.set_epoch(0)
    assert same_items(a[3], b[3])
    assert not same_items(make_ds(seed=7)[3], b[3])


def test_dataloader_workers_give_same_items():
    ds = make_ds(return_meta=False, epoch_size=4, segment_seconds=1.0)
    ds.set_epoch(3)

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, collate_fn=PaddedBatch, num_workers=workers
        )
        return [(b.id, b.mix_sig.data, b.s2_sig.data) for b in loader]

    serial, parallel = batches(0), batches(2)
    assert [s[0] for s in serial] == [p[0] for p in parallel]
    assert all(
        torch.equal(s[1], p[1]) and torch.equal(s[2], p[2]) for s, p in zip(serial, parallel)
    )
    assert serial[0][0][0] == ds[0]["id"]  # the workers saw epoch 3


def test_resample_cache_reused_and_partial_files_ignored(tmp_path, monkeypatch):
    tree = tmp_path / "speech16k"
    for spk in SPEAKERS:
        for wav in (SPEECH / spk).glob("*.wav"):
            up = audio.resample(read_audio(wav, 8000), 8000, 16000)
            write_audio(tree / spk / wav.name, up, 16000, "PCM_16")
    with pytest.raises(AudioError, match="cache_folder"):
        make_ds(speaker_folder=tree)

    calls = []
    real = audio.resample
    monkeypatch.setattr(audio, "resample", lambda *a: calls.append(a[1:]) or real(*a))
    first = DynamicMixingDataset(tree, cache_folder=tmp_path / "cache", epoch_size=3)
    assert calls == [(16000, 8000)] * 4
    cached = sorted((tmp_path / "cache" / "speech").rglob("*.wav"))
    assert len(cached) == 4 and all(sf.info(p).samplerate == 8000 for p in cached)

    # a killed run: one cache file missing, its partial temp file left behind,
    # another one corrupt
    cached[0].rename(cached[0].with_name(f".{cached[0].stem}.99999.tmp.wav"))
    cached[1].write_bytes(b"RIFF....garbage")
    second = DynamicMixingDataset(tree, cache_folder=tmp_path / "cache", epoch_size=3)
    assert len(calls) == 6  # only the two broken files were resampled again
    assert all(same_items(first[i], second[i]) for i in range(3))
    assert len(index_speakers(tmp_path / "cache" / "speech")["19"]) == 1  # temp file unseen
    third = DynamicMixingDataset(tree, cache_folder=tmp_path / "cache", epoch_size=3)
    assert len(calls) == 6 and same_items(third[0], first[0])

    at_rate = [str(p) for p in SPEECH.rglob("*.wav")]
    mapping = prepare_cache(at_rate, 8000, tmp_path / "unused")
    assert mapping == {f: f for f in at_rate} and not (tmp_path / "unused").exists()


def test_export_reads_back_as_items(tmp_path, noise_folder):
    ds = make_ds(noise_folder=noise_folder, epoch_size=2, segment_seconds=1.0, return_meta=False)
    ds.set_epoch(5)
    csv_file = ds.export(tmp_path / "valid", 3)
    assert ds.epoch == 5
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    assert len(rows) == 3 and len(DynamicItemDataset.from_csv(csv_file)) == 3
    ds.set_epoch(0)
    keys = ["mix", "s1", "s2", "noise"]
    for idx, row in enumerate(rows):
        item = ds._make(idx)  # export may go past epoch_size
        assert row["ID"] == item["id"] and float(row["duration"]) == 1.0
        for k in keys:
            assert Path(row[f"{k}_wav"]).is_absolute()
            assert torch.equal(read_audio(row[f"{k}_wav"], 8000), item[f"{k}_sig"])

    csv16 = ds.export(tmp_path / "pcm16", 2, subtype="PCM_16")
    with open(csv16, newline="") as f:
        for idx, row in enumerate(csv.DictReader(f)):
            sig = {k: read_audio(row[f"{k}_wav"], 8000) for k in keys}
            assert sf.info(row["mix_wav"]).subtype == "PCM_16"
            assert torch.equal(sig["mix"], sig["s1"] + sig["s2"] + sig["noise"])
            for k in keys:
                assert (sig[k] - ds[idx][f"{k}_sig"]).abs().max() <= 3.01 / 32768


def test_index_layouts_and_split(tmp_path):
    libri = tmp_path / "train-clean-100"
    for spk in SPEAKERS:
        for wav in (SPEECH / spk).glob("*.wav"):
            (libri / spk / f"ch{spk}").mkdir(parents=True)
            data, sr = sf.read(wav, dtype="int16")
            sf.write(libri / spk / f"ch{spk}" / f"{wav.stem}.flac", data, sr)
    write_audio(libri / "stray.wav", torch.ones(80), 8000)  # outside speaker folders
    index = index_speakers(libri)
    assert list(index) == SPEAKERS and all(f.endswith(".flac") for fs in index.values() for f in fs)
    assert list(index_speakers(libri, speaker_level=2)) == [f"ch{s}" for s in SPEAKERS]
    assert make_ds(speaker_folder=libri)[0]["mix_sig"].shape == (16000,)

    train, valid, test = split_speakers(index, valid=1, test=0.25, seed=3)
    assert len(train) == 2 and len(valid) == len(test) == 1
    assert sorted(train + valid + test) == SPEAKERS
    assert split_speakers(index, 1, 1, seed=3) == (train, valid, test)
    ds = make_ds(speakers=train)
    assert ds.speakers == train
    assert all(set(ds[i]["meta"]["speakers"]) == set(train) for i in range(len(ds)))


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_ds(speaker_folder=tmp_path / "missing")
    with pytest.raises(ValueError, match="No .wav/.flac files"):
        make_ds(speaker_folder=tmp_path)
    with pytest.raises(ValueError, match="4 speakers but 5"):
        make_ds(num_spks=5)
    with pytest.raises(ValueError, match="Only 1 speakers"):
        make_ds(speakers=["19"])
    with pytest.raises(ValueError, match="Only 3 speakers"):
        make_ds(num_spks=4, min_seconds=2.0)
    with pytest.raises(ValueError, match="not in"):
        make_ds(speakers=["19", "nobody"])
    with pytest.raises(ValueError, match="low, high"):
        make_ds(gain_db_range=(3.0, -3.0))
    with pytest.raises(FileNotFoundError, match="No .wav/.flac files"):
        make_ds(noise_folder=tmp_path / "no_noise")
    with pytest.raises(ValueError, match="hold out"):
        split_speakers(SPEAKERS, 2, 2)
    with pytest.raises(IndexError):
        make_ds()[6]
