"""Checkpoints that a kill cannot break (issue 13, part A).

A LibriMini run (tiny model) is killed with SIGKILL *while it writes a
checkpoint*: a test-side launcher replaces ``torch.save`` with one that
writes half of the file, then kills its own process, on the Nth checkpoint
file; it then runs ``train.py`` as ``python train.py`` would. The same
command without the launcher must move the cut checkpoint aside (naming the
broken file), resume from the last intact one and finish the epoch with
every optimizer step. Unit tests: a checkpoint that plain SpeechBrain wrote
and a kill cut (truncated ``optimizer.ckpt``, 0-byte ``separator.ckpt``,
empty ``CKPT.yaml``) is moved aside and the newest good one is loaded, by
recency or by ``max_key``.

Authors
-------
 * sb_mamba developers
"""

import logging
import signal
import sys

import pytest
import torch
import yaml
from speechbrain.utils.checkpoints import Checkpointer

from sb_mamba.training.checkpoints import KillSafeCheckpointer, broken_file
from tests.helpers import read_results, run_train_py

# Runs train.py (sys.argv[1]) in this process with a torch.save that cuts the
# KILL_AT_SAVE-th checkpoint file in half and SIGKILLs the process.
LAUNCHER = """
import io, os, runpy, signal, sys
import torch

N, real, count = int(os.environ["KILL_AT_SAVE"]), torch.save, [0]

def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and str(f).endswith(".ckpt"):
        count[0] += 1
        if count[0] == N:
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: buf.tell() // 2])
            print(f"KILLED while writing {f}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)

torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

STEPS = 12  # epoch_size 24 / batch_size 2: optimizer steps of the epoch
ARGS = [
    "--N_epochs=1",
    "--model_dim=8",
    "--epoch_size=24",
    "--batch_size=2",
    "--segment_seconds=0.5",
    "--n_audio_to_save=0",
    "--prepare_kwargs={n_valid: 2, n_test: 2, segment_seconds: 1.0}",
    "--ckpt_interval_minutes=0",
    "--ckpt_interval_steps=3",
]
# torch.save calls per checkpoint: separator, lr_scheduler, optimizer (in the
# order of the recoverables); the 4th is the separator of the second one.
KILL_AT_SAVE = 4


def _brain(folder):
    return yaml.safe_load((folder / "brain.ckpt").read_text())


def test_sigkill_while_writing_a_checkpoint_then_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = out / "save"
    launcher = tmp_path / "kill_on_save.py"
    launcher.write_text(LAUNCHER)
    monkeypatch.setenv("KILL_AT_SAVE", str(KILL_AT_SAVE))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first = run_train_py(
        "LibriMini",
        "sepmamba.yaml",
        f"--output_folder={out}",
        *ARGS,
        launcher=[sys.executable, str(launcher)],
        check=False,
        timeout=300,
    )
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:]
    assert "KILLED while writing" in first.stdout and "separator.ckpt" in first.stdout
    # SpeechBrain sees only the complete checkpoint; the cut one is a PARTIAL+ folder.
    complete = sorted(save.glob("CKPT+*"))
    assert len(complete) == 1 and _brain(complete[0])["optimizer_step"] == 3
    (partial,) = save.glob("PARTIAL+CKPT+*")
    assert broken_file(partial)[0].name == "separator.ckpt"

    monkeypatch.delenv("KILL_AT_SAVE")
    second = run_train_py(
        "LibriMini", "sepmamba.yaml", f"--output_folder={out}", *ARGS, timeout=300
    )
    log = second.stdout
    assert f"{partial} was cut by a kill while it was written: separator.ckpt is broken" in log
    assert "at step 3 of that epoch (optimizer step 3) - resumed" in log, log[-3000:]
    (broken,) = save.glob("BROKEN+CKPT+*")
    assert broken.name == "BROKEN+" + partial.name.removeprefix("PARTIAL+")
    assert (broken / "separator.ckpt").is_file()  # moved aside, not deleted
    assert not list(save.glob("PARTIAL+*"))
    final = [
        _brain(c)
        for c in save.glob("CKPT+*")
        if not yaml.safe_load((c / "CKPT.yaml").read_text()).get("brain_intra_epoch_ckpt")
    ]
    assert final and final[-1]["optimizer_step"] == STEPS
    assert "epoch: 1" in (out / "train_log.txt").read_text()
    read_results(out)


# ------------------------------------------------------------------ unit tests
def _objects():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3)
    return net, torch.optim.Adam(net.parameters())


def _train_and_save(ckpt, net, opt, **save_kwargs):
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    return ckpt.save_checkpoint(**save_kwargs)


@pytest.mark.parametrize("checkpointer", [Checkpointer, KillSafeCheckpointer])
@pytest.mark.parametrize("damage", ["truncated optimizer", "empty separator", "empty meta"])
def test_broken_newest_checkpoint_falls_back(tmp_path, caplog, checkpointer, damage):
    """Checkpoints cut by a kill (as plain SpeechBrain leaves them) are set aside."""
    net, opt = _objects()
    writer = checkpointer(tmp_path, {"separator": net, "optimizer": opt})
    good = _train_and_save(writer, net, opt, meta={"n": 1})
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    newest = _train_and_save(writer, net, opt, meta={"n": 2})
    name, cut = {
        "truncated optimizer": ("optimizer.ckpt", 0.5),
        "empty separator": ("separator.ckpt", 0),
        "empty meta": ("CKPT.yaml", 0),
    }[damage]
    data = (newest.path / name).read_bytes()
    (newest.path / name).write_bytes(data[: int(len(data) * cut)])

    net2, opt2 = _objects()
    reader = KillSafeCheckpointer(tmp_path, {"separator": net2, "optimizer": opt2})
    with caplog.at_level(logging.WARNING):
        loaded = reader.recover_if_possible()
    assert loaded.path == good.path and loaded.meta["n"] == 1
    assert all(torch.equal(net2.state_dict()[k], w) for k, w in weights.items())
    assert opt2.state_dict()["state"]  # the optimizer state came back too
    moved = tmp_path / f"BROKEN+{newest.path.name}"
    assert moved.is_dir() and not newest.path.exists()
    assert any(name in r.getMessage() and str(moved) in r.getMessage() for r in caplog.records)


def test_best_checkpoint_broken_falls_back_to_next_best(tmp_path):
    net, opt = _objects()
    ckpt = KillSafeCheckpointer(tmp_path, {"separator": net, "optimizer": opt})
    second = _train_and_save(ckpt, net, opt, meta={"si-snr": 5.0})
    best = _train_and_save(ckpt, net, opt, meta={"si-snr": 9.0})
    _train_and_save(ckpt, net, opt, meta={"si-snr": 1.0})
    (best.path / "separator.ckpt").write_bytes(b"")
    assert ckpt.recover_if_possible(max_key="si-snr").path == second.path
    assert (tmp_path / f"BROKEN+{best.path.name}").is_dir()


def test_missing_file_counts_only_where_other_checkpoints_have_it(tmp_path):
    net, opt = _objects()
    ckpt = KillSafeCheckpointer(tmp_path, {"separator": net, "optimizer": opt})
    old = _train_and_save(ckpt, net, opt)
    new = _train_and_save(ckpt, net, opt)
    (new.path / "optimizer.ckpt").unlink()  # a save cut between two files
    assert ckpt.recover_if_possible().path == old.path
    # a recoverable added since (no checkpoint has it) is SpeechBrain's business
    ckpt.add_recoverable("scaler", torch.nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match="missing a load path for scaler"):
        ckpt.recover_if_possible()
    assert (tmp_path / old.path.name).is_dir()


def test_a_save_cut_by_an_error_is_never_a_checkpoint(tmp_path, caplog):
    net, opt = _objects()
    ckpt = KillSafeCheckpointer(tmp_path, {"separator": net, "optimizer": opt})
    good = _train_and_save(ckpt, net, opt)

    def failing(obj, path):
        path.write_bytes(b"PK\x03\x04half")
        raise KeyboardInterrupt

    ckpt.custom_save_hooks["optimizer"] = failing
    with pytest.raises(KeyboardInterrupt):
        _train_and_save(ckpt, net, opt)
    assert [c.path for c in ckpt.list_checkpoints()] == [good.path]
    del ckpt.custom_save_hooks["optimizer"]
    with caplog.at_level(logging.WARNING):
        assert ckpt.recover_if_possible().path == good.path
    assert any("optimizer.ckpt is broken" in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob("BROKEN+CKPT+*"))) == 1
    # saving with a name again replaces the folder in one rename
    named = ckpt.save_checkpoint(name="best")
    again = ckpt.save_checkpoint(name="best", meta={"x": 1})
    assert named.path == again.path and ckpt.find_checkpoint(max_key="x").path == again.path
    assert not list(tmp_path.glob("PARTIAL+*"))


def test_intact_files_with_other_objects_are_not_broken(tmp_path):
    """A custom recoverable may pickle more than tensors: intact is not broken."""
    import numpy as np

    (tmp_path / "CKPT.yaml").write_text("unixtime: 1.0\n")
    torch.save({"a": np.arange(3)}, tmp_path / "custom.ckpt")
    (tmp_path / "dataloader-TRAIN.ckpt").write_text("None")
    assert broken_file(tmp_path) is None
    data = (tmp_path / "custom.ckpt").read_bytes()
    (tmp_path / "custom.ckpt").write_bytes(data[:-30])
    assert broken_file(tmp_path)[0].name == "custom.ckpt"
