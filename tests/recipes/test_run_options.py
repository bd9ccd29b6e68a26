"""``--ssm_backend`` is a run option of the recipes: set on the model, never stored."""

import json
import re

import pytest
import torch

from sb_mamba.dataio.librimini import prepare_librimini
from sb_mamba.errors import UserError
from sb_mamba.inference.export import export_model
from sb_mamba.nnet.mamba import Mamba
from sb_mamba.training.brain import Separation
from sb_mamba.training.recipe import run_recipe
from tests.helpers import RECIPES

RECIPE = RECIPES / "LibriMini" / "separation"
ONE_STEP = [
    "--model_dim=8",
    "--N_epochs=1",
    "--epoch_size=2",
    "--batch_size=2",
    "--segment_seconds=0.5",
    "--n_audio_to_save=0",
    "--prepare_kwargs={n_valid: 1, n_test: 1, segment_seconds: 0.5}",
]


def _first_step(out, *args, monkeypatch):
    """Run the LibriMini recipe for one optimizer step: (first loss, brain)."""
    losses = []
    fit_batch = Separation.fit_batch

    def spy(self, batch):
        loss = fit_batch(self, batch)
        losses.append(float(loss))
        return loss

    monkeypatch.setattr(Separation, "fit_batch", spy)
    brain = run_recipe(
        prepare_librimini,
        [str(RECIPE / "hparams" / "sepmamba.yaml"), f"--output_folder={out}", *ONE_STEP, *args],
        defaults={"data_folder": str(RECIPES / "LibriMini" / "data")},
    )
    assert len(losses) == 1
    return losses[0], brain


def test_ssm_backend_run_option_same_first_step_loss(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        auto, brain_auto = _first_step(tmp_path / "auto", monkeypatch=monkeypatch)
        ref, brain_torch = _first_step(
            tmp_path / "torch", "--ssm_backend=torch", monkeypatch=monkeypatch
        )
    finally:
        torch.set_num_threads(threads)
    backends = [
        {m.ssm_backend for m in b.modules.modules() if isinstance(m, Mamba)}
        for b in (brain_auto, brain_torch)
    ]
    assert backends == [{"auto"}, {"torch"}]
    assert abs(auto - ref) <= 1e-5, (auto, ref)
    env = (tmp_path / "torch" / "env.log").read_text()
    assert "sb_mamba ssm_backend: torch -> torch (cpu)" in env
    # the run's YAML copy and the exported model folder never hold it
    assert not re.search(
        r"^\s*ssm_backend:", (tmp_path / "torch" / "hyperparams.yaml").read_text(), re.M
    )
    hub = export_model(tmp_path / "torch", tmp_path / "hub")
    assert "ssm_backend" not in json.loads((hub / "config.json").read_text())["separator_args"]


def test_old_yaml_key_still_loads_with_a_warning(tmp_path):
    """A recipe YAML of before the change (its own key, passed to the model) still runs."""
    text = (RECIPE / "hparams" / "sepmamba.yaml").read_text()
    text = text.replace("model_output: ", "ssm_backend: torch # old style\nmodel_output: ", 1)
    text = text.replace(
        "    output: !ref <model_output>",
        "    output: !ref <model_output>\n    ssm_backend: !ref <ssm_backend>",
        1,
    )
    old = RECIPE / "hparams" / f"_old_{tmp_path.name}.yaml"  # its includes are relative
    old.write_text(text)
    try:
        brain = run_recipe(
            prepare_librimini,
            [str(old), f"--output_folder={tmp_path}", *ONE_STEP],
            defaults={"data_folder": str(RECIPES / "LibriMini" / "data")},
        )
    finally:
        old.unlink()
    assert {m.ssm_backend for m in brain.modules.modules() if isinstance(m, Mamba)} == {"torch"}
    log = (tmp_path / "log.txt").read_text()  # SpeechBrain's log of the run
    warnings = [line for line in log.splitlines() if "deprecated" in line]
    assert len(warnings) == 1 and "--ssm_backend=torch" in warnings[0], warnings


def test_a_wrong_backend_fails_before_any_data_work(tmp_path):
    with pytest.raises(UserError, match=r"--ssm_backend: Unknown ssm_backend 'gpu'"):
        run_recipe(
            prepare_librimini,
            [
                str(RECIPE / "hparams" / "sepmamba.yaml"),
                f"--output_folder={tmp_path}",
                *ONE_STEP,
                "--ssm_backend=gpu",
            ],
            defaults={"data_folder": str(RECIPES / "LibriMini" / "data")},
        )
    assert not (tmp_path / "save" / "valid.csv").exists()  # nothing prepared
