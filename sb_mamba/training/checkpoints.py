"""Checkpoints that a kill cannot break: SpeechBrain's Checkpointer, written atomically.

SpeechBrain writes a checkpoint into its final ``CKPT+<time>`` folder,
``CKPT.yaml`` first: a run killed while it writes (SIGKILL, out of memory,
a pre-empted job) leaves a folder that looks complete with a truncated
``separator.ckpt``, and every rerun then dies on it (``EOFError``) although
an intact older checkpoint sits next to it. :class:`KillSafeCheckpointer`
(the ``checkpointer`` of every sb_mamba recipe) changes two things and keeps
everything else of SpeechBrain's (``max_keys``/``min_keys``, importance,
intra-epoch checkpoints, only the main process writes):

- **Writing**: a checkpoint is written into ``PARTIAL+CKPT+<time>``, its
  files flushed to disk, and the folder renamed to ``CKPT+<time>`` when
  complete (a rename is atomic): SpeechBrain only sees complete
  checkpoints.
- **Recovering**: before loading, the checkpoint it would load is verified
  (every ``*.ckpt`` file reads: torch files are read with
  ``torch.load(weights_only=True)`` after a CRC check of every byte, text
  files must parse). A broken one (a checkpoint written by plain
  SpeechBrain and cut by a kill, a damaged disk) or a ``PARTIAL+`` folder
  left by a killed save is moved aside to ``BROKEN+<name>`` (never
  deleted) with a warning naming the broken file, and the next checkpoint
  by the same ranking is tried.

Authors
-------
 * sb_mamba developers
"""

import logging
import os
import pathlib
import shutil
import zipfile

import torch
import yaml
from speechbrain.utils.checkpoints import (
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
)
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

PARTIAL_PREFIX = "PARTIAL+"  # a checkpoint being written (not seen by SpeechBrain)
BROKEN_PREFIX = "BROKEN+"  # a checkpoint that did not read, moved aside
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format


def broken_file(folder):
    """The first ``*.ckpt`` file of a checkpoint folder that does not read, or None.

    Torch files (zip) must pass a CRC check of every member and load with
    ``torch.load(weights_only=True)`` (a file that is intact but holds more
    than tensors and plain containers is accepted: no foreign code runs to
    check it); other files (SpeechBrain's text counters, ``brain.ckpt``)
    must be UTF-8 YAML with a value. ``CKPT.yaml`` must be a mapping.

    Arguments
    ---------
    folder : str or Path
        A checkpoint folder.

    Returns
    -------
    tuple of (Path, str) or None
        The broken file and why.

    Example
    -------
    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "CKPT.yaml").write_text("unixtime: 1.0")
    13
    >>> torch.save({"w": torch.ones(3)}, folder / "model.ckpt")
    >>> (folder / "counter.ckpt").write_text("2")
    1
    >>> broken_file(folder) is None
    True
    >>> data = (folder / "model.ckpt").read_bytes()
    >>> _ = (folder / "model.ckpt").write_bytes(data[: len(data) // 2])
    >>> broken_file(folder)[0].name
    'model.ckpt'
    """
    folder = pathlib.Path(folder)
    meta = folder / METAFNAME
    try:
        if not isinstance(yaml.safe_load(meta.read_text(encoding="utf-8")), dict):
            return meta, "not a YAML mapping (empty or cut)"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return meta, f"{type(e).__name__}: {e}"
    for path in sorted(folder.glob("*" + PARAMFILE_EXT)):
        why = _unreadable(path)
        if why:
            return path, why
    return None


def _unreadable(path):
    """Why ``path`` does not read as a checkpoint file, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            return "empty file (0 bytes)"
        if head == _ZIP_MAGIC:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"CRC error in {bad}"
            return _torch_unreadable(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a torch file in the legacy (non-zip) format
            return _torch_unreadable(path)
        if yaml.safe_load(text) is None:
            return "no value (empty or cut text file)"
    except (OSError, zipfile.BadZipFile, EOFError, yaml.YAMLError, RuntimeError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def _torch_unreadable(path):
    """Why ``torch.load(path, weights_only=True)`` fails, or None.

    A file that reads but holds objects other than tensors and plain
    containers is not broken (a custom recoverable may save such objects):
    only a failure to read the data counts.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        text = " ".join(str(e).split())
        if "Unsupported global" in text or "Unsupported class" in text:
            return None  # intact, holds objects weights_only does not build
        return f"{type(e).__name__}: {text[:200]}"
    return None


def set_aside(folder, why):
    """Rename a broken checkpoint folder to ``BROKEN+<name>`` (a free name) and log it.

    Returns
    -------
    Path
        The new place of the folder.
    """
    folder = pathlib.Path(folder)
    name = folder.name.removeprefix(PARTIAL_PREFIX)
    target, n = folder.with_name(BROKEN_PREFIX + name), 1
    while target.exists():
        target, n = folder.with_name(f"{BROKEN_PREFIX}{name}+{n}"), n + 1
    os.replace(folder, target)
    logger.warning("%s; moved aside to %s (kept for inspection: delete it when done).", why, target)
    return target


def _fsync(path, directory=False):
    """Flush a file (or a folder's entries) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class KillSafeCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer``, written atomically and verified before loading.

    Same arguments and methods as
    :class:`speechbrain.utils.checkpoints.Checkpointer` (see the module
    docstring for what changes).

    Example
    -------
    >>> import tempfile
    >>> net = torch.nn.Linear(2, 2)
    >>> ckpt = KillSafeCheckpointer(tempfile.mkdtemp(), {"net": net})
    >>> saved = ckpt.save_checkpoint()
    >>> saved.path.name.startswith("CKPT+"), sorted(p.name for p in saved.path.iterdir())
    (True, ['CKPT.yaml', 'net.ckpt'])
    >>> _ = (saved.path / "net.ckpt").write_bytes(b"")  # cut by a kill
    >>> ckpt.recover_if_possible() is None  # moved aside, nothing else to load
    True
    >>> sorted(p.name[:12] for p in ckpt.checkpoints_dir.iterdir())
    ['BROKEN+CKPT+']
    """

    def save_checkpoint(
        self,
        meta={},  # noqa: B006 - SpeechBrain's signature, never mutated
        end_of_epoch=True,
        name=None,
        verbosity=logging.INFO,
    ):
        """Save a checkpoint into ``PARTIAL+<name>``, rename it to ``<name>`` once complete.

        Arguments and return value: those of SpeechBrain's
        ``Checkpointer.save_checkpoint``.
        """
        final = partial = saved_meta = None
        if if_main_process():
            final = (
                self._new_checkpoint_dirpath()
                if name is None
                else self._custom_checkpoint_dirpath(name)
            )
            partial = final.with_name(PARTIAL_PREFIX + final.name)
            if partial.exists():  # left by a save killed with this very name
                shutil.rmtree(partial)
            os.makedirs(partial)
            saved_meta = self._save_checkpoint_metafile(partial / METAFNAME, meta, end_of_epoch)
        partial = ddp_broadcast(partial, src=0)  # savers that run on every process

        for key, obj in self.recoverables.items():
            hook = self.custom_save_hooks.get(key) or get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hook is None:
                raise RuntimeError(
                    f"Don't know how to save {type(obj)}. Register a default "
                    "hook or add a custom hook for this object."
                )
            hook(obj, partial / f"{key}{PARAMFILE_EXT}")
        ddp_barrier()  # every process has written its part

        if not if_main_process():
            return None
        for path in partial.iterdir():
            _fsync(path)
        _fsync(partial, directory=True)
        if final.exists():  # a custom name saved again: replace the old one
            old = final.with_name(PARTIAL_PREFIX + "old+" + final.name)
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old)
        else:
            os.replace(partial, final)  # (a rename lost to a power cut loses this one only)
        kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {kind} checkpoint in {final}")
        paramfiles = {key: final / f"{key}{PARAMFILE_EXT}" for key in self.recoverables}
        return Checkpoint(final, saved_meta, paramfiles)

    def list_checkpoints(self):
        """SpeechBrain's list, without folders whose ``CKPT.yaml`` does not read.

        (:meth:`recover_if_possible` moves such folders aside.)
        """
        good = [d for d in self._list_checkpoint_dirs() if _meta_ok(d)]
        return self._construct_checkpoint_objects(good)

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Recover from the checkpoint SpeechBrain would pick, after moving broken ones aside.

        The main process moves aside every ``PARTIAL+`` folder and, while
        the chosen checkpoint does not read, that checkpoint; then every
        process recovers as SpeechBrain does.
        """
        run_on_main(
            self.set_aside_broken,
            kwargs=dict(
                importance_key=importance_key,
                max_key=max_key,
                min_key=min_key,
                ckpt_predicate=ckpt_predicate,
            ),
        )
        return super().recover_if_possible(importance_key, max_key, min_key, ckpt_predicate)

    def set_aside_broken(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Move aside broken checkpoints until the one picked by these keys reads.

        Also moves aside ``PARTIAL+`` folders (saves cut by a kill) and
        ``CKPT+`` folders without a readable ``CKPT.yaml``.

        Returns
        -------
        list of Path
            Where the broken folders went.
        """
        moved = []
        for folder in sorted(self.checkpoints_dir.glob(PARTIAL_PREFIX + "*")):
            found = broken_file(folder) if folder.is_dir() else None
            what = f"{found[0].name} is broken ({found[1]})" if found else "it is incomplete"
            moved.append(
                set_aside(
                    folder, f"Checkpoint {folder} was cut by a kill while it was written: {what}"
                )
            )
        for folder in self._list_checkpoint_dirs():
            if not _meta_ok(folder):
                moved.append(set_aside(folder, f"Checkpoint {folder}: {METAFNAME} does not read"))
        while True:
            chosen = self.find_checkpoint(importance_key, max_key, min_key, ckpt_predicate)
            found = None if chosen is None else self._broken(chosen)
            if found is None:
                return moved
            moved.append(
                set_aside(
                    chosen.path,
                    f"Checkpoint {chosen.path} is broken: "
                    f"{found[0].name} does not read ({found[1]}); "
                    "resuming from the next intact checkpoint",
                )
            )

    def _broken(self, checkpoint):
        """(file, why) of a checkpoint that cannot be loaded, or None.

        A file the checkpoint lacks counts only where other checkpoints of
        the folder have it (a save cut between two files) and the
        recoverable is not optional (``add_recoverable(...,
        optional_load=True)``, e.g. a weight average switched on since); a
        recoverable added since (e.g. a grad scaler) is left to SpeechBrain's
        own check.
        """
        found = broken_file(checkpoint.path)
        if found is not None:
            return found
        others = {
            k for c in self.list_checkpoints() if c.path != checkpoint.path for k in c.paramfiles
        }
        for key in self.recoverables:
            optional = self.optional_recoverables.get(key, False) or "dataloader" in key
            if key in others and key not in checkpoint.paramfiles and not optional:
                return checkpoint.path / f"{key}{PARAMFILE_EXT}", "missing"
        return None


def _meta_ok(folder):
    """Whether ``folder/CKPT.yaml`` reads as a mapping with the save time."""
    try:
        meta = yaml.safe_load((pathlib.Path(folder) / METAFNAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and "unixtime" in meta
