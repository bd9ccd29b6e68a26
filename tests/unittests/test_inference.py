"""Inference layer: export, hub loading, chunked separation, bad input, CLI.

A tiny SepMamba (dim 8, one block) is trained for zero steps, saved by a
SpeechBrain Checkpointer into a fake recipe output folder and exported. The
chunk stitching is tested with an oracle separator that returns the true
sources, permuted and rescaled at random for every chunk.

Authors
-------
 * sb_mamba developers
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from safetensors.torch import load_file
from speechbrain.utils.checkpoints import Checkpointer

from sb_mamba import cli
from sb_mamba.audio import AudioError, resample, write_audio
from sb_mamba.inference import MambaSeparator
from sb_mamba.inference.chunking import chunk_bounds, chunked_separate
from sb_mamba.inference.export import export_model, upload_to_hub
from sb_mamba.metrics import pit_metric, si_snr
from sb_mamba.resources import pretrained_path
from tests.helpers import make_mixture

ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = f"""
data_folder: !PLACEHOLDER
num_spks: 2
sample_rate: 8000
model: !include:{ROOT}/hparams/models/sepmamba_s.yaml
    num_spks: !ref <num_spks>
    dim: 8
    num_blocks: 1
    d_state: 4
modules:
    separator: !ref <model[separator]>
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(hub folder, in-memory model of the best checkpoint, tmp folder)."""
    tmp = tmp_path_factory.mktemp("inference")
    (tmp / "train.yaml").write_text(TRAIN_YAML)
    out = tmp / "recipe_out"
    out.mkdir()
    with open(tmp / "train.yaml") as f:  # what SpeechBrain copies into the output
        (out / "hyperparams.yaml").write_text(
            resolve_references(f, {"data_folder": "/data"}).getvalue()
        )
    torch.manual_seed(0)
    with open(out / "hyperparams.yaml") as f:
        net = load_hyperpyyaml(f)["modules"]["separator"]
    ckpt = Checkpointer(out / "save", {"separator": net})
    ckpt.save_checkpoint(meta={"si-snr": 5.0})  # the best one
    best = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    ckpt.save_checkpoint(meta={"si-snr": 2.0})
    ckpt.save_checkpoint(meta={"end-of-epoch": False})  # intra-epoch, no key
    net.load_state_dict(best)
    (out / "test_results.csv").write_text(
        "snt_id,sdr,sdr_i,si-snr,si-snr_i\nx,1,2,3,4\navg,11.5,12.5,13.25,14.5\n"
    )
    hub = export_model(out, tmp / "hub")
    model = MambaSeparator(
        modules={"separator": net},
        hparams={"sample_rate": 8000, "num_spks": 2},
        run_opts={"device": "cpu"},
    )
    return hub, model, tmp


def long_mixture():
    """6 s of two real speakers, from four concatenated 1.5 s mixtures."""
    segs = [make_mixture(1.5, offset=o) for o in (0.0, 0.8, 1.6, 2.4)]
    return torch.cat([s[0] for s in segs], 1)[0], torch.cat([s[1] for s in segs], 1)[0]


class Oracle(torch.nn.Module):
    """Returns the true sources of a chunk, randomly permuted (and rescaled)."""

    def __init__(self, mix, sources, gains=False):
        super().__init__()
        self.mix, self.sources, self.gains, self.perms = mix, sources, gains, []
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):  # [1, L] -> [1, L, S]
        L, S = x.shape[1], self.sources.shape[1]
        starts = (self.mix == x[0, 0]).nonzero()[:, 0].tolist()
        a = next(s for s in starts if torch.equal(self.mix[s : s + L], x[0]))
        perm = torch.randperm(S, generator=self.gen)
        gain = 0.5 + 1.5 * torch.rand(S, generator=self.gen) if self.gains else 1.0
        self.perms.append(perm.tolist())
        src = self.sources[a : a + L]
        src = src + 0.1 * src.flip(-1)  # imperfect separation: 10 % crosstalk
        return (src[:, perm] * gain)[None]


def test_export_layout_and_card(exported):
    hub, _, _ = exported
    names = sorted(p.name for p in hub.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "hyperparams_train.yaml",
        "separator.safetensors",
        "test_results.csv",
    ]
    config = json.loads((hub / "config.json").read_text())
    assert config["separator_class"] == "sb_mamba.lobes.sepmamba.SepMamba"
    assert "ssm_backend" not in config["separator_args"]  # a run option, never stored
    assert (config["sample_rate"], config["num_spks"], config["format_version"]) == (8000, 2, 1)
    card = (hub / "README.md").read_text()
    assert "| 13.25 | 14.50 | 11.50 | 12.50 |" in card
    assert "pip install .  # in a clone of sb_mamba" in card
    # a shipped card sits in the repository, whose CI runs `ruff format --check .`
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(hub / "README.md")],
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_from_hparams_offline_subprocess_matches_memory(exported):
    hub, model, tmp = exported
    mix = make_mixture(1.0)[0]
    torch.save(mix, tmp / "mix.pt")
    script = textwrap.dedent(f"""
        import torch
        from sb_mamba.inference.separator import MambaSeparator
        m = MambaSeparator.from_hparams(source={str(hub)!r},
            savedir={str(tmp / "sd")!r}, run_opts={{"device": "cpu"}})
        assert m.sample_rate == 8000 and m.num_spks == 2
        est = m.separate_batch(torch.load({str(tmp / "mix.pt")!r}))
        torch.save(est, {str(tmp / "est.pt")!r})
    """)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    est = torch.load(tmp / "est.pt")
    assert est.shape == (1, 8000, 2)
    assert torch.allclose(est, model.separate_batch(mix), atol=1e-4)


def test_fp16_raw_yaml_export_and_upload(exported, monkeypatch):
    hub, model, tmp = exported
    hub16 = export_model(
        tmp / "recipe_out",
        tmp / "hub16",
        fp16=True,
        hparams_file=tmp / "train.yaml",
        test_results={"si-snr": 1.0},
    )
    state = load_file(str(hub16 / "separator.safetensors"))
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    m16 = MambaSeparator.from_hparams(source=str(hub16), run_opts={"device": "cpu"})
    assert next(m16.mods.parameters()).dtype == torch.float32
    mix = make_mixture(0.5)[0]
    ref = model.separate_batch(mix)[0].T
    assert (si_snr(m16.separate_batch(mix)[0].T, ref) > 30).all()
    with pytest.raises(FileNotFoundError):
        MambaSeparator.from_hparams(source=str(tmp / "nope"))
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", folder_path, repo_id))
            return "commit"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert upload_to_hub(hub, "me/tiny", token="t") == "commit"
    assert calls == [("init", "t"), ("create", "me/tiny"), ("upload", str(hub), "me/tiny")]


def test_chunked_oracle_no_swap():
    mix, sources = long_mixture()
    sisnr = lambda e: pit_metric(sources[None], e)[0].item()  # noqa: E731
    for gains in (False, True):
        oracle = Oracle(mix, sources, gains)
        model = MambaSeparator(
            modules={"separator": oracle},
            hparams={"sample_rate": 8000, "num_spks": 2},
            run_opts={"device": "cpu"},
        )
        whole = model.separate_signal(mix)
        est = model.separate_signal(mix[None], chunk_seconds=0.75, overlap=0.5)
        assert est.shape == (1, *sources.shape)
        assert len({tuple(p) for p in oracle.perms}) == 2  # the oracle did swap
        if not gains:
            assert abs(sisnr(est) - sisnr(whole)) < 1.0
        # every 0.25 s window (all chunk borders) keeps the global assignment
        _, perm = pit_metric(sources[None], est)
        for a in range(0, mix.shape[0] - 2000, 2000):
            ref, e = sources[None, a : a + 2000], est[:, a : a + 2000]
            level = 10 * torch.log10((ref**2).sum(1)).diff().abs().item()
            if level < 10:  # both speakers active enough to tell them apart
                assert pit_metric(ref, e)[1].tolist() == perm.tolist(), a


@pytest.mark.parametrize(
    "T,chunk,overlap", [(1001, 300, 0.5), (5003, 640, 0.25), (4999, 1000, 0.75), (777, 200, 0.0)]
)
def test_ola_weights_sum_to_one(T, chunk, overlap):
    mix = torch.randn(T)
    est = chunked_separate(lambda x: torch.stack([x, 2 * x], -1), mix, 2, chunk, overlap)
    assert torch.allclose(est, torch.stack([mix, 2 * mix], -1), atol=1e-5)


def test_chunk_progress_bar_counts_the_chunks(capsys):
    mix = torch.randn(1001)
    n = len(chunk_bounds(1001, 300, 0.5))
    chunked_separate(lambda x: torch.stack([x, -x], -1), mix, 2, 300, 0.5, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert n > 1 and "Separating: 100%" in bar and f"{n}/{n} " in bar, bar
    chunked_separate(lambda x: torch.stack([x, -x], -1), mix, 2, 300, 0.5, progress=False)
    assert "Separating" not in capsys.readouterr().err


def test_real_model_lengths_and_normalize(exported):
    _, model, _ = exported
    for T in (1001, 12345):
        mix = make_mixture(2.0)[0][0, :T]
        est = model.separate_signal(mix, chunk_seconds=0.5, overlap=0.5)
        assert est.shape == (1, T, 2) and torch.isfinite(est).all()
    whole = model.separate_signal(mix)
    assert (si_snr(est[0].T, whole[0].T) > 20).all()  # chunks agree with one pass
    peak = model.separate_signal(mix, normalize="peak")
    assert torch.allclose(peak.abs().amax(1), torch.full((1, 2), 0.9))
    fit = model.separate_signal(mix, normalize="mixture")[0].sum(-1)
    assert abs(torch.dot(mix - fit, fit)) < 1e-3 * torch.dot(fit, fit)


def test_stereo_and_resampled_files(exported, tmp_path, caplog):
    _, model, _ = exported
    mix = make_mixture(2.0)[0][0]
    write_audio(tmp_path / "mono.wav", mix, 8000)
    ref = model.separate_file(tmp_path / "mono.wav", output_dir=tmp_path / "out")
    assert ref.shape == (1, 16000, 2)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["mono_s1.wav", "mono_s2.wav"]
    diff = 0.05 * torch.randn(16000)
    for sr in (8000, 16000, 44100):
        stereo = resample(torch.stack([mix + diff, mix - diff]), 8000, sr).T  # [T, 2]
        write_audio(tmp_path / f"st{sr}.flac", stereo, sr, subtype="PCM_24")
        with caplog.at_level("INFO"):
            est = model.separate_file(tmp_path / f"st{sr}.flac")
        assert est.shape == ref.shape
        assert (si_snr(est[0].T, ref[0].T) > 20).all(), sr
    assert "resampled 44100 -> 8000 Hz, averaged 2 channels" in caplog.text


def test_bad_inputs(exported, tmp_path, caplog):
    _, model, _ = exported
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(200))
    write_audio(tmp_path / "zero_frames.wav", torch.zeros(0), 8000)
    nan = torch.zeros(800)
    nan[5] = float("nan")
    write_audio(tmp_path / "nan.wav", nan, 8000)
    for name, msg in [
        ("missing.wav", "not found"),
        ("empty.wav", "Cannot decode"),
        ("corrupt.wav", "Cannot decode"),
        ("zero_frames.wav", "empty"),
        ("nan.wav", "NaN"),
    ]:
        with pytest.raises(AudioError, match=msg):
            model.separate_file(tmp_path / name)
    write_audio(tmp_path / "zeros.wav", torch.zeros(1001), 8000)
    with caplog.at_level("WARNING"):
        est = model.separate_file(tmp_path / "zeros.wav", normalize="peak")
    assert est.shape == (1, 1001, 2) and not est.any() and "all zeros" in caplog.text
    with pytest.raises(ValueError, match="NaN"):
        model.separate_signal(nan)
    with pytest.raises(ValueError, match="mono"):
        model.separate_signal(torch.randn(2, 800))


def test_cli_folder(exported, tmp_path, capsys):
    hub, _, _ = exported
    data, out = tmp_path / "data", tmp_path / "out"
    mix = make_mixture(1.0)[0][0]
    write_audio(data / "a.wav", mix, 8000)
    write_audio(data / "sub" / "b.flac", mix[:4001], 16000, subtype="PCM_16")
    (data / "c.wav").write_bytes(b"not audio")
    (data / "notes.txt").write_text("ignored")
    argv = [str(hub), str(data), "-o", str(out), "--chunk-seconds", "0.5"]
    assert cli.main(["separate", *argv]) == 1
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*.wav"))
    assert made == ["a_s1.wav", "a_s2.wav", "sub/b_s1.wav", "sub/b_s2.wav"]
    err = capsys.readouterr().err
    assert "Skipped" in err and "c.wav" in err and "1 failed" in err
    # said once: sub/b.flac (16 kHz) is written at the model's 8 kHz
    assert err.count("written at 8000 Hz, the model's rate") == 1 and "b.flac" in err
    assert f"-> {out}" in err
    # nothing separated into a folder never made: no "-> folder"
    assert cli.main(["separate", str(hub), str(data / "c.wav"), "-o", str(tmp_path / "e3")]) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err and "e3" not in err.split("Done")[-1]
    assert not (tmp_path / "e3").exists()
    (out / "a_s1.wav").write_bytes(b"keep")
    assert cli.main(["separate", *argv]) == 1
    assert (out / "a_s1.wav").read_bytes() == b"keep"
    assert "--force" in capsys.readouterr().err
    assert cli.main(["separate", *argv, "--force", "--ext", "wav"]) == 1  # c.wav still fails
    assert (out / "a_s1.wav").read_bytes() != b"keep"
    assert cli.main(["separate", str(hub), str(data / "a.wav"), "-o", str(out), "--force"]) == 0


def test_pit_metric_aligns_three_speakers_in_every_order():
    # chunked_separate aligns each chunk's speakers with pit_metric (batch of one)
    ref = torch.randn(500, 3)
    for perm in itertools.permutations(range(3)):
        est = ref[:, list(perm)]
        assert est[:, pit_metric(ref[None], est[None])[1][0]].equal(ref)


def test_auto_chunking_only_beyond_30_s(exported, caplog, monkeypatch):
    _, model, _ = exported
    calls = []
    monkeypatch.setattr(
        model, "separate_batch", lambda x: calls.append(x.shape[1]) or torch.stack([x, -x], -1)
    )
    with caplog.at_level("INFO", logger="sb_mamba.inference.separator"):
        est = model.separate_signal(torch.randn(8000 * 31))  # default "auto"
    assert est.shape == (1, 8000 * 31, 2)
    assert (
        "Chunked inference: 10 s chunks" in caplog.text and max(calls) <= 8000 * 10 + 256
    )  # chunk_bounds quantum
    calls.clear()
    model.separate_signal(torch.randn(8000 * 29))
    assert calls == [8000 * 29]  # one pass


def test_shipped_demo_model_from_cli(tmp_path, capsys):
    """The README's command: no MODEL argument -> the shipped demo model."""
    from sb_mamba.audio import read_audio

    DEFAULT_MODEL = Path(pretrained_path())

    mix = DEFAULT_MODEL / "test_mixture.wav"
    assert cli.main(["separate", str(mix), "-o", str(tmp_path)]) == 0
    outs = [read_audio(tmp_path / f"test_mixture_s{i}.wav", 8000) for i in (1, 2)]
    wav = read_audio(mix, 8000)
    assert all(o.shape == wav.shape and torch.isfinite(o).all() for o in outs)
    assert not torch.allclose(outs[0], outs[1])
    assert cli.main(["separate", str(tmp_path / "nothing_here.wav"), "-o", str(tmp_path)]) == 2


def test_shipped_model_by_name(tmp_path, monkeypatch):
    """A shipped model's name loads its packaged folder (a pip user has no
    path to it); an unknown name's error lists the shipped ones."""
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    by_name = MambaSeparator.from_hparams(source="sepmamba-causal-8k")
    by_path = MambaSeparator.from_hparams(source=pretrained_path("sepmamba-causal-8k"))
    mix = torch.randn(1, 800)
    assert torch.equal(by_name.separate_batch(mix), by_path.separate_batch(mix))
    assert by_name.hparams.separator.causal
    with pytest.raises(FileNotFoundError, match="nor a shipped model: .*sepmamba-causal-8k"):
        MambaSeparator.from_hparams(source="sepmamba-8khz")
