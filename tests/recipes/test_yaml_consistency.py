"""Every key of every recipe YAML is read, and a key that nothing reads is refused.

A top-level key must be referenced inside the YAML (``!ref <key>``), read by
the recipe or the Brain (their ``HPARAMS_READ``, checked here against what
their code reads) or be one of SpeechBrain's run options; ``load_hparams``
refuses any other (a misspelt optional key would be silently ignored).

Authors
-------
 * sb_mamba developers
"""

import re
import shutil
from pathlib import Path

import pytest
import speechbrain as sb

from sb_mamba.errors import UserError
from sb_mamba.training import brain, recipe
from sb_mamba.training.recipe import check_keys, load_hparams, main, yaml_keys

ROOT = Path(__file__).resolve().parents[2]
RECIPE_YAMLS = sorted(ROOT.glob("recipes/*/separation/hparams/*.yaml"))
SB_RUN_OPTS = set(sb.core.RunOptions().as_dict())  # SpeechBrain's Brain reads these
LIBRIMINI = ROOT / "recipes" / "LibriMini" / "separation" / "hparams" / "sepmamba.yaml"
IDS = {"ids": lambda p: f"{p.parts[-4]}/{p.name}"}

# How brain.py and recipe.py read a key of the hparams.
READS = [
    r"hparams(?:\.get\(|\[)\s*[\"'](\w+)[\"']",  # hparams.get("k"), hparams["k"]
    r"(?:getattr|hasattr)\(\s*(?:self\.hparams|brain\.hparams|hp)\s*,\s*[\"'](\w+)[\"']",
    r"(?:self\.hparams|brain\.hparams|\bhp)\.(\w+)",  # self.hparams.k, hp.k
]


def keys_read(module):
    text = Path(module.__file__).read_text()
    return {k for pattern in READS for k in re.findall(pattern, text)} - {"get"}


@pytest.mark.parametrize("module", [brain, recipe], ids=lambda m: m.__name__)
def test_hparams_read_is_what_the_code_reads(module):
    assert keys_read(module) == set(module.HPARAMS_READ)


@pytest.mark.parametrize("path", RECIPE_YAMLS, **IDS)
def test_every_key_is_referenced_or_read(path):
    keys, referenced = yaml_keys(path.read_text())
    known = referenced | recipe.HPARAMS_READ | brain.HPARAMS_READ | SB_RUN_OPTS
    unused = [k for k in keys if not k.startswith("__") and k not in known]
    assert not unused, f"{path}: keys read by nothing: {unused}"
    check_keys(path, path.read_text())  # what load_hparams runs


@pytest.mark.parametrize("path", RECIPE_YAMLS, **IDS)
def test_every_recipe_yaml_loads(path, tmp_path):
    hp = load_hparams(
        path, {"output_folder": str(tmp_path / "out")}, {"data_folder": str(tmp_path / "data")}
    )
    assert type(hp["checkpointer"]).__name__ == "KillSafeCheckpointer"
    assert "separator" in hp["modules"]


def test_yaml_keys_reads_references():
    text = (
        "seed: 1\nout: !ref results/<seed>\nmodel: {a: 1}\nm: !ref <model[a]>\n"
        "n: !ref <seed> * <x.y>\nx: !new:collections.OrderedDict\n"
        "s: !copy <seed>\n# <nope> in a comment\nplain: <notaref>\n"
    )
    keys, referenced = yaml_keys(text)
    assert keys == ["seed", "out", "model", "m", "n", "x", "s", "plain"]
    assert referenced == {"seed", "model", "x"}


def test_misspelt_optional_key_is_a_user_error(tmp_path):
    # A copy of the recipe outside the clone (its model fragment is found anyway).
    text = LIBRIMINI.read_text().replace("use_rand_shift: False", "use_rand_shfit: True")
    assert "use_rand_shfit" in text
    copy = tmp_path / "sepmamba.yaml"
    copy.write_text(text)
    with pytest.raises(
        UserError,
        match=r"key use_rand_shfit is read by nothing .* did you "
        r"mean use_rand_shift\? Fix its spelling",
    ):
        load_hparams(copy, None, {"data_folder": str(tmp_path)})
    # keys starting with __ and keys the caller says it reads are fine
    copy.write_text(text.replace("use_rand_shfit:", "__use_rand_shfit:"))
    load_hparams(copy, {"output_folder": str(tmp_path / "a")}, {"data_folder": str(tmp_path)})
    copy.write_text(text.replace("use_rand_shfit:", "my_key:"))
    load_hparams(
        copy,
        {"output_folder": str(tmp_path / "b")},
        {"data_folder": str(tmp_path)},
        read_keys={"my_key"},
    )


def test_misspelt_key_ends_train_py_with_one_line(tmp_path, caplog):
    shutil.copy(LIBRIMINI, tmp_path / "sepmamba.yaml")
    (tmp_path / "sepmamba.yaml").write_text(
        LIBRIMINI.read_text().replace("use_speedperturb:", "use_speed_perturb:")
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            None,
            [str(tmp_path / "sepmamba.yaml"), f"--output_folder={tmp_path}/out"],
            {"data_folder": str(tmp_path)},
        )
    assert exit_info.value.code == 2
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "use_speed_perturb" in record.getMessage()
    assert "did you mean use_speedperturb?" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_there_are_recipes():
    assert len(RECIPE_YAMLS) >= 1
