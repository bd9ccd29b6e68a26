"""Every dataset recipe x YAML runs one tiny epoch on its dataset's real layout.

For each ``recipes/{WSJ0Mix,WHAMandWHAMR,LibriMix,Echo2Mix}/separation``
YAML, a tiny dataset in the real folder layout (``tests/recipes/fixtures.py``,
built once per session) goes through the recipe's own data preparation (the
``prepare`` of its ``train.py``), one training epoch of a shrunken model,
validation, test and ``test_results.csv``. The recipes run in this process
(:func:`sb_mamba.training.recipe.run_recipe` with the command-line arguments a user
would give ``train.py``), which saves the interpreter and import start-up of
a subprocess per run; ``tests/recipes/test_librimini.py`` covers the
``python train.py`` and torchrun entry points themselves.

Authors
-------
 * sb_mamba developers
"""

import csv
import re

import pytest

from sb_mamba.training.recipe import run_recipe
from tests.helpers import (
    BUILDERS,
    COMMON,
    RECIPES,
    ROOT,
    SHRINK,
    load_prepare,
    read_results,
)

SPEECH = ROOT / "tests" / "samples" / "speech_8k"  # 4 speakers: the DM speaker tree

# Recipe folder -> fixture builder of its dataset (WHAMandWHAMR: per YAML).
DATASET = {"WSJ0Mix": "wsj0mix", "LibriMix": "librimix", "Echo2Mix": "echo2mix"}


# Command-line overrides that shrink each model to a few thousand parameters.
def _cases():
    """(recipe, yaml, extra args) for every recipe YAML, plus option variants."""
    cases = []
    for recipe in ("WSJ0Mix", "WHAMandWHAMR", "LibriMix", "Echo2Mix"):
        for path in sorted((RECIPES / recipe / "separation" / "hparams").glob("*.yaml")):
            cases.append(pytest.param(recipe, path.name, [], id=f"{recipe}/{path.name}"))
    cases += [  # the options the default YAMLs leave off
        pytest.param(
            "WSJ0Mix", "spmamba.yaml", ["--dynamic_mixing=True"], id="WSJ0Mix/spmamba.yaml+DM"
        ),
        pytest.param(
            "WHAMandWHAMR",
            "spmamba-wham.yaml",
            ["--dynamic_mixing=True"],
            id="WHAMandWHAMR/spmamba-wham.yaml+DM",
        ),
        pytest.param(
            "LibriMix",
            "sepmamba.yaml",
            ["--use_wham_noise=True"],
            id="LibriMix/sepmamba.yaml+noise+DM",
        ),
        pytest.param(
            "LibriMix", "s4m.yaml", ["--use_wham_noise=True"], id="LibriMix/s4m.yaml+noise"
        ),
    ]
    return cases


@pytest.fixture(scope="session")
def dataset_folder(tmp_path_factory):
    """``dataset_folder(name)``: the tiny dataset ``name``, built once per session."""
    built = {}

    def get(name):
        if name not in built:
            root = tmp_path_factory.mktemp(f"data_{name}")
            built[name] = BUILDERS[name](root, n=(2, 1, 1))  # train, valid, test mixtures
        return built[name]

    return get


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("recipe, yaml_name, extra", _cases())
def test_recipe_runs(recipe, yaml_name, extra, dataset_folder, tmp_path, one_thread):
    yaml_path = RECIPES / recipe / "separation" / "hparams" / yaml_name
    text = yaml_path.read_text()
    dataset = (
        re.search(r"^    dataset: (\w+)", text, re.M).group(1)
        if recipe == "WHAMandWHAMR"
        else DATASET[recipe]
    )
    model = yaml_name.split("-")[0].removesuffix(".yaml")
    out = tmp_path / "run"
    args = [
        str(yaml_path),
        f"--data_folder={dataset_folder(dataset)}",
        f"--output_folder={out}",
        *COMMON,
        *SHRINK[model],
        *extra,
    ]
    dm = "--dynamic_mixing=True" in extra or re.search(r"^dynamic_mixing: True", text, re.M)
    if dm:  # mix the bundled speakers on the fly (noise: the dataset's own)
        args += [f"--base_folder_dm={SPEECH}", "--epoch_size=2"]

    brain = run_recipe(load_prepare(recipe), args)

    rows = read_results(out)
    assert len(rows) == 2  # 1 test mixture + avg
    assert "valid si-snr" in (out / "train_log.txt").read_text()
    assert brain.hparams.epoch_counter.current == 1
    # The recipe read the intended version of the dataset.
    train = _csv_rows(out / "save" / "train.csv")
    noisy = dataset in ("wham", "whamr") or "--use_wham_noise=True" in extra
    assert ("noise_wav" in train[0]) == noisy
    if dataset == "whamr":
        assert "/mix_both_reverb/" in train[0]["mix_wav"]
        assert "/s1_anechoic/" in train[0]["s1_wav"]
    if dataset == "librimix":
        train_set = re.search(r"^    train_set: (\S+)", text, re.M).group(1)
        assert all(f"/{train_set}/" in row["mix_wav"] for row in train)
        assert ("/mix_both/" in train[0]["mix_wav"]) == noisy
    if dm:
        dm_set = brain._train_dataset
        assert len(dm_set) == 2 and bool(dm_set.noise_files) == noisy
    if dataset == "echo2mix":
        assert brain.hparams.sample_rate == 16000
