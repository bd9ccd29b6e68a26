"""The shipped general model reproduces its published robustness figures.

``pretrained/sepmamba-8k/robustness.json`` holds what
``benchmarks/bench_robustness.py`` measured for the shipped model, mixture by
mixture. The clean test set is made of bundled speech only (LibriMini's test
readers), so here its first mixtures are regenerated with the preparation's
own code, separated by the shipped folder, and each figure must match the
published one; the model card's table must show the JSON's averages. A lone
talker (bundled test readers) must leave the second output much quieter.

Authors
-------
 * sb_mamba developers
"""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from sb_mamba.dataio.general import condition_dataset, link_speakers
from sb_mamba.dataio.mixing import DynamicMixingDataset
from sb_mamba.inference import MambaSeparator
from sb_mamba.resources import pretrained_path
from tests.helpers import LIBRIMINI_DATA, ROOT

N_CHECKED = 12  # the first clean mixtures (all 100 take ~1 min on one core)
MODEL = "sepmamba-8k"

spec = importlib.util.spec_from_file_location(
    "bench_robustness", ROOT / "benchmarks" / "bench_robustness.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shipped():
    folder = Path(pretrained_path(MODEL))
    published = json.loads((folder / "robustness.json").read_text())["models"][MODEL]
    return folder, published, MambaSeparator.from_hparams(source=folder)


def test_shipped_model_matches_its_clean_figures(tmp_path, shipped):
    folder, published, model = shipped
    link_speakers(tmp_path, "test-librimini", LIBRIMINI_DATA)
    ds = condition_dataset(tmp_path, "clean", N_CHECKED)  # the benchmark's clean set
    csv_file = ds.export(tmp_path / "clean", N_CHECKED, subtype="PCM_16")
    ours = bench.score_folder(model, csv_file)
    theirs = published["clean"]["scores"][:N_CHECKED]
    assert [s["id"] for s in ours] == [s["id"] for s in theirs], "mixtures differ"
    diffs = [abs(a["si_snri"] - b["si_snri"]) for a, b in zip(ours, theirs)]
    assert max(diffs) < 0.01, list(zip(ours, theirs))
    # the card's table shows the JSON's averages, and the averages are the scores'
    card = (folder / "README.md").read_text()
    for cond in ("clean", "voices", "reverb", "noisy"):
        scores = [s["si_snri"] for s in published[cond]["scores"]]
        assert published[cond]["si_snri_mean"] == pytest.approx(statistics.mean(scores), abs=1e-3)
        assert f"{published[cond]['si_snri_mean']:.2f}" in card
    assert f"{published['single']['ratio_db_median']:.1f} dB" in card


def test_a_lone_talker_leaves_the_second_output_quiet(tmp_path, shipped):
    _, published, model = shipped
    readers = link_speakers(tmp_path, "test-librimini", LIBRIMINI_DATA)  # bundled speech only
    ds = DynamicMixingDataset(readers, epoch_size=8, segment_seconds=4.0, single_prob=1.0)
    csv_file = ds.export(tmp_path / "single", 8, subtype="PCM_16")
    ratios = [s["ratio_db"] for s in bench.score_folder(model, csv_file, single=True)]
    # the target: the quieter output at least 20 dB below the louder (the benchmark's
    # single-talker set, both corpora, is published beside it); never split over both
    assert published["single"]["ratio_db_median"] >= 20.0
    assert statistics.median(ratios) >= 20.0 and min(ratios) > 10.0, ratios
