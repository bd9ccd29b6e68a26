"""General recipe: a debug run on a tiny copy of the shared data, and bad input.

Authors
-------
 * sb_mamba developers
"""

import pytest
import torch

from sb_mamba.inference.export import export_model, find_best_checkpoint
from sb_mamba.modelfolder import WEIGHTS, read_checkpoint_weights, read_weights
from tests.helpers import make_shared_data, read_results, run_train_py

TINY = [
    "--model_dim=8",
    "--epoch_size=8",
    "--batch_size=2",
    "--segment_seconds=0.5",
    "--prepare_kwargs={n_valid: 2, n_test: 2, segment_seconds: 1.0, conditions: [single, noisy]}",
    "--n_audio_to_save=1",
    "--single_prob=0.5",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return make_shared_data(tmp_path_factory.mktemp("shared"))


def test_debug_epoch_trains_on_rooms_noise_and_single_talkers(tmp_path, shared):
    data, splits = shared
    out = tmp_path / "run"
    proc = run_train_py(
        "General",
        "sepmamba.yaml",
        f"--data_folder={data}",
        f"--splits={splits}",
        f"--output_folder={out}",
        "--N_epochs=1",
        *TINY,
    )
    assert "Skipped a batch" not in proc.stdout  # single talkers give usable losses
    rows = read_results(out)
    assert len(rows) == 3  # 2 test mixtures + avg
    save = out / "save"
    assert (save / "test_single.csv").is_file() and (save / "test_noisy.csv").is_file()
    log = (out / "train_log.txt").read_text()
    assert "valid si-snr" in log and "valid si-snri-raw" in log  # ema_decay: both scores
    # the export holds the weight average that validation ranked, not the last weights
    best = find_best_checkpoint(save)
    averaged, is_average = read_checkpoint_weights(best.paramfiles)
    last = read_weights(best.paramfiles["separator"])
    exported = read_weights(export_model(out, tmp_path / "model") / WEIGHTS)
    assert is_average and exported.keys() == averaged.keys() == last.keys()
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert not all(torch.equal(exported[k], last[k]) for k in exported)
    assert (
        sorted(p.name[:3] for p in (save / "links" / "speech" / "train").iterdir())
        == ["l2-"] * 4 + ["ls-"] * 156
    )


def test_missing_shared_data_is_one_clear_error(tmp_path):
    proc = run_train_py(
        "General",
        "sepmamba.yaml",
        f"--data_folder={tmp_path / 'nothing'}",
        f"--output_folder={tmp_path / 'run'}",
        "--N_epochs=1",
        *TINY,
        check=False,
    )
    assert proc.returncode != 0
    assert "does not exist: set data_folder to the shared data folder" in proc.stdout
    assert "Traceback" not in proc.stdout
