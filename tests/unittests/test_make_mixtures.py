"""The dataset generator (``sb-mamba make-mixtures``): layouts, levels, determinism.

Authors
-------
 * sb_mamba developers
"""

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from sb_mamba.cli import main as sb_mamba_main
from sb_mamba.dataio.generate import add_arguments, make_mixtures, regenerate, run
from sb_mamba.dataio.manifests import prepare_echo2mix, prepare_whamr
from sb_mamba.errors import UserError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SPEECH, NOISE, RIRS = SAMPLES / "speech_8k", SAMPLES / "noise_8k", SAMPLES / "rir"
TINY = dict(
    n=(2, 1, 1),
    segment_seconds=0.5,
    speaker_split=(0, 0),
    seed=11,
    room_ranges={"rt60": [0.2, 0.3]},
)


def wav_files(folder):
    """Relative path -> bytes of every dataset .wav (not the cache, not the bank)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*.wav"))
        if p.relative_to(folder).parts[0] not in ("cache", "rir_bank")
    }


def main(argv):
    """``sb-mamba make-mixtures ARGV``, in this process."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def read(path):
    return sf.read(str(path), dtype="float64")[0]


def gcc_phat_lag(x, ref):
    """Lag of the peak of the phase-transform generalized cross-correlation."""
    n = 1 << (len(x) + len(ref) - 2).bit_length()
    r = np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n))
    lag = int(np.argmax(np.fft.irfft(r / np.maximum(np.abs(r), 1e-12), n)))
    return lag if lag < n // 2 else lag - n


@pytest.fixture(scope="module")
def whamr(tmp_path_factory):
    """A tiny WHAMR!-layout dataset (noise, simulated rooms, early targets)."""
    out = tmp_path_factory.mktemp("gen") / "whamr"
    make_mixtures(SPEECH, out, layout="whamr", noise_folder=NOISE, extra_targets=("early",), **TINY)
    return out


def test_whamr_layout_levels_snr_alignment(whamr, tmp_path):
    with open(whamr / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["tr", "tr", "cv", "tt"]
    for row in rows:
        d = whamr / "wav8k" / "min" / row["split"]
        name = row["ID"] + ".wav"
        get = {
            k: read(d / k / name)
            for k in (
                "mix_both_reverb",
                "mix_clean_reverb",
                "noise",
                "s1_reverb",
                "s2_reverb",
                "s1_anechoic",
                "s2_anechoic",
                "s1_early",
                "mix_both_anechoic",
            )
        }
        assert len(get["mix_both_reverb"]) == 4000
        # 16-bit files: the mixtures are exact sums of the written parts.
        assert np.array_equal(
            get["mix_both_reverb"], get["s1_reverb"] + get["s2_reverb"] + get["noise"]
        )
        assert np.array_equal(
            get["mix_both_anechoic"], get["s1_anechoic"] + get["s2_anechoic"] + get["noise"]
        )
        snr = 10 * np.log10(np.sum(get["mix_clean_reverb"] ** 2) / np.sum(get["noise"] ** 2))
        assert abs(snr - float(row["snr_db"])) < 0.1, (snr, row["snr_db"])
        levels = [
            10 * np.log10(np.sum(get[f"s{k}_reverb"] ** 2) / int(row[f"s{k}_length"]))
            for k in (1, 2)
        ]
        asked = float(row["s1_gain_db"]) - float(row["s2_gain_db"])
        assert abs((levels[0] - levels[1]) - asked) < 0.1, (levels, asked)
        for k in (1, 2):  # targets aligned with the reverberant mixture
            for kind in ("anechoic",) + ("early",) * (k == 1):
                c = correlate(get["mix_both_reverb"], get[f"s{k}_{kind}"], method="fft")
                assert abs(int(np.argmax(c)) - (len(c) - 1) // 2) <= 1
                assert abs(gcc_phat_lag(get["mix_both_reverb"], get[f"s{k}_{kind}"])) <= 1
        assert row["s1_rir"] != row["s2_rir"] and row["s1_rir"][:10] == row["s2_rir"][:10]
    assert len({r["room_id"] for r in rows}) == 4  # one room per mixture
    csvs = prepare_whamr(whamr, tmp_path / "csv", targets="early")
    with open(csvs["train"], newline="") as f:
        train = list(csv.DictReader(f))
    assert len(train) == 2 and "/s1_early/" in train[0]["s1_wav"]


def test_same_seed_same_bytes_any_workers_and_metadata_regenerates(whamr, tmp_path):
    again = tmp_path / "again"
    make_mixtures(
        SPEECH,
        again,
        layout="whamr",
        noise_folder=NOISE,
        extra_targets=("early",),
        num_workers=2,
        **TINY,
    )
    a, b = wav_files(whamr), wav_files(again)
    assert a.keys() == b.keys() and len(a) == 4 * 11  # 11 folders per split
    assert all(a[k] == b[k] for k in a)
    assert (whamr / "metadata.csv").read_bytes() == (again / "metadata.csv").read_bytes()
    for f in (whamr / "rir_bank" / "rirs").iterdir():
        assert f.read_bytes() == (again / "rir_bank" / "rirs" / f.name).read_bytes()
    # Regenerate from the metadata alone (no random draw), into a new folder.
    new = tmp_path / "regen"
    regenerate(whamr / "metadata.csv", new)
    c = wav_files(new)
    assert c.keys() == a.keys() and all(a[k] == c[k] for k in a)
    assert (new / "metadata.csv").read_bytes() == (whamr / "metadata.csv").read_bytes()
    # Another seed gives other mixtures.
    other = tmp_path / "other"
    make_mixtures(
        SPEECH,
        other,
        layout="whamr",
        noise_folder=NOISE,
        rir_bank=whamr / "rir_bank",
        **{**TINY, "seed": 12},
    )
    d = wav_files(other)
    assert not any(d.get(k) == v for k, v in a.items() if "mix_" in k)


def test_echo2mix_layout_from_measured_rirs_via_the_cli(tmp_path):
    out = tmp_path / "Echo2Mix"
    assert (
        main(
            [
                str(out),
                "--speech",
                str(SPEECH),
                "--rir-bank",
                str(RIRS),
                "--layout",
                "echo2mix",
                "--n",
                "2",
                "1",
                "1",
                "--segment-seconds",
                "0.5",
                "--held-out",
                "0",
                "0",
                "--subtype",
                "FLOAT",
            ]
        )
        == 0
    )
    mixes = sorted(out.rglob("mix.wav"))
    assert [m.relative_to(out).parts[0] for m in mixes] == ["test", "train", "train", "val"]
    for mix in mixes:
        x, sr = sf.read(str(mix), dtype="float64")
        s1, s2 = read(mix.parent / "spk1_reverb.wav"), read(mix.parent / "spk2_reverb.wav")
        assert sr == 16000 and len(x) == 8000 and not (mix.parent / "noise.wav").exists()
        assert np.allclose(x, s1 + s2, atol=1e-6)
        assert mix.parent.parent.name == "Univ._of_Surrey_Room_A_reverberant_Hummersone_BRIR_set"
    csvs = prepare_echo2mix(out, tmp_path / "csv")
    with open(csvs["valid"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="speech folder .* does not exist"):
        make_mixtures(tmp_path / "nope", tmp_path / "out", **TINY)
    with pytest.raises(FileNotFoundError, match="noise folder .* does not exist"):
        make_mixtures(SPEECH, tmp_path / "out", noise_folder=tmp_path / "nope", **TINY)
    with pytest.raises(FileNotFoundError, match="RIR bank folder .* does not exist"):
        make_mixtures(SPEECH, tmp_path / "out", rir_bank=tmp_path / "nope", **TINY)
    with pytest.raises(UserError, match="8000 or 16000"):
        make_mixtures(SPEECH, tmp_path / "out", sample_rate=22050, **TINY)
    with pytest.raises(UserError, match="every split needs 2 speakers"):
        make_mixtures(SPEECH, tmp_path / "out", **{**TINY, "speaker_split": (1, 1)})
    with pytest.raises(UserError, match="layout must be one of"):
        make_mixtures(SPEECH, tmp_path / "out", layout="wsj0", **TINY)
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        regenerate(tmp_path / "metadata.csv", tmp_path / "out")
    with pytest.raises(UserError, match="--speech is required"):
        main([str(tmp_path / "out")])
    # bad values of the command line: one user error, before anything is written
    for flags, message in (
        (["--snr", "3", "-6"], "snr_db_range must be"),
        (["--rt60", "0.5", "0.2"], "rt60 must be"),
        (["--held-out", "9", "9"], "hold out"),
        (["--held-out", "0", "0", "--workers", "0"], "--workers"),
    ):
        with pytest.raises(UserError, match=message):
            main([str(tmp_path / "cli"), "--speech", str(SPEECH), "--n", "1", "1", "1", *flags])
    assert not (tmp_path / "cli").exists()  # not even an empty output folder


# ------------------------------------------------ the output folder (issue 13)
QUICK = dict(rir_bank=RIRS, n=(2, 1, 1), segment_seconds=0.5, speaker_split=(0, 0), seed=11)


def _mixtures(out):
    return sorted(p.relative_to(out) for p in Path(out).rglob("mix_clean_reverb/*.wav"))


def test_output_folder_inside_an_input_is_refused(tmp_path):
    speech, noise = tmp_path / "speech", tmp_path / "noise"
    shutil.copytree(SPEECH, speech)
    shutil.copytree(NOISE, noise)
    for out, name in (
        (speech / "mixtures", "speech"),
        (speech, "speech"),
        (noise / "a" / "b", "noise"),
    ):
        with pytest.raises(UserError, match=f"inside the {name} folder"):
            make_mixtures(speech, out, noise_folder=noise, **QUICK)
    assert sorted(p.name for p in speech.iterdir()) == sorted(p.name for p in SPEECH.iterdir())
    assert not (noise / "a").exists()
    with pytest.raises(UserError, match="inside the RIR bank folder"):
        make_mixtures(speech, RIRS / "out", **{**QUICK, "rir_bank": RIRS})
    assert not (RIRS / "out").exists()


def test_rerun_with_other_options_is_refused_or_overwritten(tmp_path, capsys):
    out = tmp_path / "data"
    make_mixtures(SPEECH, out, **QUICK)
    first = wav_files(out)
    make_mixtures(SPEECH, out, **QUICK)  # the same options: the same files again
    assert wav_files(out) == first
    # another --n / --seed: refused, one line and exit 2 on the command line
    cli = [
        "make-mixtures",
        str(out),
        "--speech",
        str(SPEECH),
        "--rir-bank",
        str(RIRS),
        "--segment-seconds",
        "0.5",
        "--held-out",
        "0",
        "0",
        "--seed",
        "11",
    ]
    capsys.readouterr()
    assert sb_mamba_main([*cli, "--n", "1", "1", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "made with other options (n [2, 1, 1] there, [1, 1, 1] now)" in err
    assert "--overwrite" in err
    with pytest.raises(UserError, match="seed 11 there, 12 now"):
        make_mixtures(SPEECH, out, **{**QUICK, "seed": 12})
    assert wav_files(out) == first  # untouched
    # --overwrite: only the new run's files remain (no mixture of both runs)
    (out / "notes.txt").write_text("mine")
    assert sb_mamba_main([*cli, "--n", "1", "1", "1", "--overwrite"]) == 0
    assert len(_mixtures(out)) == 3 and (out / "notes.txt").read_text() == "mine"
    with open(out / "metadata.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    csvs = prepare_whamr(out, tmp_path / "csv", mix="mix_clean_reverb")
    with open(csvs["train"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_folder_not_written_by_make_mixtures_is_never_cleared(tmp_path):
    out = tmp_path / "data"
    (out / "wav8k").mkdir(parents=True)
    (out / "wav8k" / "precious.wav").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not written by sb-mamba make-mixtures"):
            make_mixtures(SPEECH, out, overwrite=overwrite, **QUICK)
    assert (out / "wav8k" / "precious.wav").read_bytes() == b"x"
    with pytest.raises(UserError, match="is a file"):
        make_mixtures(SPEECH, out / "wav8k" / "precious.wav", **QUICK)


def test_overwrite_never_removes_an_input(tmp_path):
    out = tmp_path / "data"
    make_mixtures(
        SPEECH,
        out,
        **{**QUICK, "rir_bank": None, "n": (1, 1, 1), "room_ranges": {"rt60": [0.2, 0.3]}},
    )
    assert (out / "rir_bank").is_dir()  # simulated: written by the run
    with pytest.raises(UserError, match="would remove .*rir_bank"):
        make_mixtures(SPEECH, out, overwrite=True, **{**QUICK, "rir_bank": out / "rir_bank"})
    assert (out / "rir_bank").is_dir()
    # regenerating a dataset into its own folder is refused too
    with pytest.raises(UserError, match="inside the (RIR bank|source dataset) folder"):
        regenerate(out / "metadata.csv", out / "again")
    assert not (out / "again").exists()


def test_a_killed_run_is_resumed_with_the_same_options(tmp_path):
    out = tmp_path / "data"
    make_mixtures(SPEECH, out, **QUICK)
    first = wav_files(out)
    (out / "metadata.csv").unlink()  # as if killed before the end
    next(iter(out.rglob("*.wav"))).unlink()
    make_mixtures(SPEECH, out, **QUICK)
    assert wav_files(out) == first and (out / "metadata.csv").is_file()
