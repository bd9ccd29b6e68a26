"""Pieces of benchmarks/bench_quality_budget.py (the benchmark itself is not a test).

Authors
-------
 * sb_mamba developers
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sb_mamba.audio import write_audio

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_quality_budget.py"
spec = importlib.util.spec_from_file_location("bench_quality_budget", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_overrides_keep_tags_and_reach_the_model(tmp_path):
    hp = bench.load_hparams(
        bench.DEFAULT_YAML,
        "{model_dim: 8, lr: 0.003, lr_schedule: warmup_cosine, model: {stride: 8}}",
        tmp_path,
    )
    assert hp["output_folder"] == str(tmp_path) and hp["lr"] == 0.003
    assert type(hp["lr_scheduler"]).__name__ == "WarmupCosine" and hp["lr_scheduler"].lr == 0.003
    sep = hp["modules"]["separator"]
    assert sep.stride == 8 and sep.down[0].conv.out_channels == 8
    with pytest.raises(SystemExit, match="mapping"):
        bench.load_hparams(bench.DEFAULT_YAML, "[1, 2]", tmp_path)


def test_peer_is_speechbrains_conv_tasnet():
    torch.manual_seed(0)
    peer = bench.conv_tasnet()
    assert sum(p.numel() for p in peer.parameters()) == 1_722_928  # N=256 B=128 H=256 X=8 R=3
    assert peer(torch.randn(2, 8001)).shape == (2, 8001, 2)


def test_eval_dir_scores_a_mix_s1_s2_folder_at_any_rate(tmp_path):
    torch.manual_seed(0)
    s1, s2 = torch.randn(16000) * 0.1, torch.randn(16000) * 0.1
    for name, sig in (("mix", s1 + s2), ("s1", s1), ("s2", s2)):
        write_audio(tmp_path / name / "a.wav", sig, 16000)  # 16 kHz, resampled to 8 kHz
    (tmp_path / "mix" / "orphan.wav").write_bytes(b"")  # no s1/s2: left out
    pairs = bench.dir_pairs(tmp_path)
    assert [Path(m).name for m, _ in pairs] == ["a.wav"]

    def oracle(mix):  # returns the references themselves: a perfect separator
        ref = torch.stack([bench_read(p) for p in pairs[0][1]], -1)[None]
        return ref[:, : mix.shape[1]]

    def bench_read(p):
        from sb_mamba.audio import read_audio

        return read_audio(p, 8000, resample_to_rate=True)

    sisnri, sdri = bench.si_snri_of(oracle, pairs, 8000)
    assert sisnri > 30 and sdri > 30  # perfect estimates: huge improvement
    with pytest.raises(SystemExit, match="mix/ s1/ s2/"):
        bench.dir_pairs(tmp_path / "mix")


def test_markdown_table_of_a_report(tmp_path):
    report = {
        "load_average": [[0.5, 1.9], [1.0, 2.1]],
        "runs": [
            {
                "name": "ours",
                "overrides": "{model_dim: 32}",
                "params": 744354,
                "steps": 10,
                "curve": [{"budget_point": 5.0, "valid_si_snri": 1.5}],
                "test_si_snri": 1.4,
                "test_sdri": 2.0,
            }
        ],
    }
    (tmp_path / "r.json").write_text(json.dumps(report))
    table = bench.markdown_table([tmp_path / "r.json"]).splitlines()
    assert table[0].startswith("| run | overrides |") and "5 min" in table[0]
    assert table[2] == "| ours | `{model_dim: 32}` | 0.74M | 10 | 1.50 | 1.40 | 2.00 | 1.9-2.1 |"


def test_training_loader_draws_new_mixtures_every_epoch(tmp_path):
    """The benchmark trains on dynamic mixing, not on epoch 0's mixtures again and again."""
    import speechbrain as sb

    from sb_mamba.training.brain import Separation

    hp = bench.load_hparams(bench.DEFAULT_YAML, "{model_dim: 8, epoch_size: 4}", tmp_path)
    brain = Separation(
        modules=hp["modules"],
        opt_class=hp["optimizer"],
        hparams=hp,
        run_opts={"device": "cpu"},
        checkpointer=None,
    )
    loader = bench.train_loader(brain, hp)
    firsts = []
    for epoch in (1, 2, 1):
        brain.on_stage_start(sb.Stage.TRAIN, epoch)
        firsts.append(next(iter(loader)).mix_sig[0])
    assert not torch.equal(firsts[0], firsts[1])  # epoch 2 mixes anew
    assert torch.equal(firsts[0], firsts[2])  # and epoch 1 is reproducible
