"""``sb-mamba-separate``: separate every audio file of folders or file lists.

::

    sb-mamba-separate meeting.wav -o out        # the shipped demo model
    sb-mamba-separate pretrained/sepmamba-librimini-8k recordings/ a.flac -o out
    sb-mamba-separate owner/hub-model meetings/ -o out --device cuda:0 \\
        --chunk-seconds 8 --overlap 0.5 --normalize peak

MODEL (a folder written by ``sb-mamba-export`` or a HuggingFace id) may be
left out: when the first argument is an audio file or a folder without a
``hyperparams.yaml``, every argument is an input and the demo model shipped in
the repository (``pretrained/sepmamba-librimini-8k``) is used.
Files longer than 30 s are separated in 10 s chunks unless
``--chunk-seconds`` says otherwise (``--chunk-seconds 0``: one pass).
Folders are searched recursively for ``--ext`` files; ``DIR/sub/x.flac``
gives ``OUT/sub/x_s1.wav``, ``OUT/sub/x_s2.wav``, ... (float WAV at the
model rate). An unreadable file is skipped with a one-line message and the
run goes on; existing outputs are kept unless ``--force``. Exit status: 0 if
every file was separated or skipped as existing, 1 if some failed, 2 if the
model or the inputs could not be used at all.

Authors
-------
 * sb_mamba developers
"""

import argparse
import logging
import sys
from pathlib import Path

from speechbrain.utils.logger import get_logger
from tqdm import tqdm

logger = get_logger(__name__)

DEFAULT_EXT = "wav,flac,ogg,mp3,opus,aiff,aif"


class _TqdmHandler(logging.Handler):
    """Log records written with ``tqdm.write`` (keeps the progress bar intact)."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(verbose=False):
    """Route the CLI's messages, warnings and errors through tqdm.

    Per-file details (resampling, chunking) and SpeechBrain's INFO messages
    are shown only with ``verbose``. Returns a function that restores the
    previous logging set-up.
    """
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(lambda r: verbose or r.levelno >= logging.WARNING
                      or r.name == __name__)
    saved = []
    for name, level in (("sb_mamba", logging.INFO), ("speechbrain", logging.WARNING)):
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False

    def restore():
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate

    return restore


def find_inputs(paths, exts):
    """``(file, relative path)`` pairs; folders are searched recursively.

    Arguments
    ---------
    paths : list of str
        Files and folders.
    exts : set of str
        Lower-case extensions without the dot.

    Returns
    -------
    found : list of (Path, Path)
    missing : list of str
        Arguments that are neither a file nor a folder.
    """
    found, missing = [], []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower().lstrip(".") in exts)
            found += [(f, f.relative_to(p)) for f in files]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            missing.append(arg)
    return found, missing


def build_parser():
    """The argument parser of ``sb-mamba-separate``."""
    p = argparse.ArgumentParser(
        prog="sb-mamba-separate",
        description="Separate the speakers of audio files with an sb_mamba model.",
    )
    p.add_argument("inputs", nargs="+", metavar="[MODEL] FILE_OR_DIR",
                   help="model folder (sb-mamba-export) or HuggingFace id, optional "
                        "(default: the shipped demo model), then audio files and/or folders")
    p.add_argument("-o", "--output-dir", required=True, help="output folder")
    p.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--chunk-seconds", default="auto",
                   help="chunk length in seconds for long audio; 'auto' (default): "
                        "one pass up to 30 s, 10 s chunks beyond; 0: always one pass")
    p.add_argument("--overlap", type=float, default=0.25,
                   help="overlap fraction of consecutive chunks")
    p.add_argument("--normalize", choices=["none", "peak", "mixture"], default="none",
                   help="output scaling (default: as the model outputs)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--ext", default=DEFAULT_EXT,
                   help=f"extensions searched in folders (default {DEFAULT_EXT})")
    p.add_argument("--savedir", default=None,
                   help="where a hub model is stored (default: HF cache)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log what is done to each file (resampling, chunks)")
    return p


def split_model(inputs):
    """``(model, inputs)``: the model argument, or the shipped default model.

    Example
    -------
    >>> split_model(["owner/repo", "a.wav"])
    ('owner/repo', ['a.wav'])
    """
    first = Path(inputs[0])
    is_input = first.is_file() or (first.is_dir() and not (first / "hyperparams.yaml").exists())
    if len(inputs) > 1 and not is_input:
        return inputs[0], inputs[1:]
    from sb_mamba.resources import pretrained_path

    return pretrained_path(), inputs


def _chunk_seconds(value):
    """``--chunk-seconds``: "auto", None (one pass) or seconds."""
    if value == "auto":
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"--chunk-seconds takes 'auto' or a number, not {value!r}.") from None
    return seconds if seconds > 0 else None


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.chunk_seconds = _chunk_seconds(args.chunk_seconds)
        args.model, args.inputs = split_model(args.inputs)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    restore = _setup_logging(args.verbose)
    try:
        return _run(args)
    finally:
        restore()


def _run(args):
    from sb_mamba.audio import AudioError
    from sb_mamba.inference.separator import MambaSeparator, source_paths

    exts = {e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()}
    files, missing = find_inputs(args.inputs, exts)
    for arg in missing:
        logger.error("Skipped %s: no such file or folder.", arg)
    if not files:
        logger.error("No audio files (%s) found in %s.", ",".join(sorted(exts)),
                     " ".join(args.inputs))
        return 2
    try:
        model = MambaSeparator.from_hparams(
            source=args.model, savedir=args.savedir, run_opts={"device": args.device}
        )
    except Exception as e:
        logger.error("Cannot load the model %s: %s: %s", args.model,
                     type(e).__name__, e)
        return 2
    out = Path(args.output_dir)
    done, skipped, failed, seen = 0, 0, len(missing), set()
    for path, rel in tqdm(files, desc="separating", unit="file", dynamic_ncols=True):
        targets = source_paths(rel, out / rel.parent, model.num_spks)
        if targets[0] in seen:
            logger.error("Skipped %s: same output name as another input.", path)
            failed += 1
            continue
        seen.add(targets[0])
        if not args.force and any(t.exists() for t in targets):
            logger.warning("Skipped %s: %s exists (use --force).", path, targets[0])
            skipped += 1
            continue
        try:
            model.separate_file(path, chunk_seconds=args.chunk_seconds,
                                overlap=args.overlap, normalize=args.normalize,
                                output_dir=out / rel.parent)
            done += 1
        except (AudioError, ValueError, RuntimeError, MemoryError) as e:
            logger.error("Skipped %s: %s", path, e)
            failed += 1
    logger.info("Done: %d separated, %d skipped (outputs exist), %d failed -> %s",
                done, skipped, failed, out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
