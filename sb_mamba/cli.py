"""``sb-mamba``: the one command line of sb_mamba.

::

    sb-mamba separate meeting.wav -o out        # the shipped demo model
    sb-mamba separate MODEL recordings/ a.flac -o out --device cuda:0
    sb-mamba export results/sepmamba/1234 my-model [--upload owner/name]
    sb-mamba convert official.ckpt my-model      # official SPMamba / SepMamba weights
    sb-mamba migrate old-model                   # an old-layout model folder, rewritten once
    sb-mamba make-mixtures OUT --speech SPEECH --layout whamr --noise NOISE
    sb-mamba make-rir-bank BANK --rooms 1000 --workers 8
    arecord -f S16_LE -r 8000 -c 1 | sb-mamba stream MODEL | aplay -f S16_LE -r 8000 -c 2

Error policy (every subcommand, and the recipes' ``train.py``): a user error
(a missing file, a bad argument, a dataset folder in the wrong layout: a
:class:`~sb_mamba.errors.UserError` or ``FileNotFoundError``) prints one
line ``sb-mamba <command>: error: ...`` naming the problem and the fix, with
no traceback, and exits 2; anything else is a bug and keeps its traceback
(``SB_MAMBA_TRACEBACK=1`` shows it for user errors too).

``separate``: MODEL (a folder written by ``sb-mamba export`` or a
HuggingFace id) may be left out: when the first argument is an audio file or
a folder that is no model folder, every argument is an input and the
demo model shipped with the package (``pretrained/sepmamba-librimini-8k``)
is used. Files longer than 30 s are separated in 10 s chunks unless
``--chunk-seconds`` says otherwise (``--chunk-seconds 0``: one pass).
Folders are searched recursively for ``--ext`` files; ``DIR/sub/x.flac``
gives ``OUT/sub/x_s1.wav``, ``OUT/sub/x_s2.wav``, ... (float WAV at the
model rate). An unreadable file is skipped with a one-line message and the
run goes on; existing outputs are kept unless ``--force``. Exit status: 0 if
every file was separated or skipped as existing, 1 if some failed, 2 if the
model or the inputs could not be used at all. A full disk stops the run
with one line naming the error (``ENOSPC``); Ctrl-C stops it with one line
(exit 130); finished outputs are kept, a file being written is removed.

Authors
-------
 * sb_mamba developers
"""

import argparse
import errno
import importlib
import sys
from pathlib import Path

from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from sb_mamba.errors import USER_ERROR, UserError, run_with_policy
from sb_mamba.inference.run_options import add_run_options, load_model
from sb_mamba.logs import ALWAYS_INFO, setup_cli_logging

logger = get_logger(__name__)

DEFAULT_EXT = "wav,flac,ogg,mp3,opus,aiff,aif"
INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT)


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
            files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower().lstrip(".") in exts
            )
            found += [(f, f.relative_to(p)) for f in files]
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            missing.append(arg)
    return found, missing


def add_arguments(p):
    """The arguments of ``sb-mamba separate``."""
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="[MODEL] FILE_OR_DIR",
        help="model folder (sb-mamba export: config.json and "
        "separator.safetensors) or HuggingFace id, optional (default: the "
        "shipped demo model), then audio files and/or folders",
    )
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="the model (folder, hub id or shipped name); then every positional is an input",
    )
    p.add_argument("-o", "--output-dir", required=True, help="output folder")
    add_run_options(p)
    p.add_argument(
        "--chunk-seconds",
        default="auto",
        help="chunk length in seconds for long audio; 'auto' (default): "
        "one pass up to 30 s, 10 s chunks beyond; 0: always one pass",
    )
    p.add_argument(
        "--overlap", type=float, default=0.25, help="overlap fraction of consecutive chunks"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="run through the streaming path of a causal model (sb-mamba "
        "stream's; the same output as one offline pass)",
    )
    p.add_argument(
        "--normalize",
        choices=["mixture", "peak", "none"],
        default="mixture",
        help="output scaling: 'mixture' (default) keeps the mixture's level, "
        "never above full scale when the input is not; 'peak': each "
        "source to 0.9; 'none': as the model outputs",
    )
    p.add_argument(
        "--sample-rate",
        default="model",
        help="rate of the written files: 'model' (default), 'input' (the input file's) or Hz",
    )
    p.add_argument(
        "--max-hours",
        type=float,
        default=10.0,
        help="refuse inputs longer than this at 16 kHz (default 10)",
    )
    p.add_argument(
        "--trust-model", action="store_true", help=argparse.SUPPRESS
    )  # no effect: a model folder is data
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument(
        "--ext", default=DEFAULT_EXT, help=f"extensions searched in folders (default {DEFAULT_EXT})"
    )
    p.add_argument(
        "--savedir", default=None, help="where a hub model is stored (default: HF cache)"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what is done to each file (resampling, chunks)",
    )


def split_model(inputs):
    """``(model, inputs)``: the model argument, or the shipped default model.

    Example
    -------
    >>> split_model(["owner/repo", "a.wav"])
    ('owner/repo', ['a.wav'])
    """
    from sb_mamba.modelfolder import hub_source, layout

    first = Path(inputs[0])
    model_folder = first.is_dir() and layout(first) is not None
    hub_id = hub_source(inputs[0]) and first.suffix.lower().lstrip(".") not in DEFAULT_EXT.split(
        ","
    )
    if len(inputs) > 1 and (model_folder or hub_id):
        return inputs[0], inputs[1:]
    from sb_mamba.resources import pretrained_path

    return pretrained_path(), inputs


def _linked_folder(out, sub):
    """The first folder from ``out/sub``'s top down to it that is a link, or None."""
    folder = out
    for part in sub.parts:
        folder = folder / part
        if folder.is_symlink():
            return folder
    return None


def _chunk_seconds(value):
    """``--chunk-seconds``: "auto", None (one pass) or seconds."""
    if value == "auto":
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"--chunk-seconds takes 'auto' or a number, not {value!r}.") from None
    return seconds if seconds > 0 else None


def run(args):
    """``sb-mamba separate``: separate every input file; returns the exit status."""
    args.chunk_seconds = _chunk_seconds(args.chunk_seconds)
    if args.sample_rate not in ("model", "input"):
        try:
            args.sample_rate = int(args.sample_rate)
        except ValueError:
            raise UserError(
                f"--sample-rate takes 'model', 'input' or Hz, not {args.sample_rate!r}."
            ) from None
    if args.model is None:
        args.model, args.inputs = split_model(args.inputs)
    return _separate(args)


def _separate(args):
    from sb_mamba.audio import inside
    from sb_mamba.inference.separator import source_paths

    exts = {e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()}
    files, missing = find_inputs(args.inputs, exts)
    if missing and not files:
        raise FileNotFoundError(2, "No such file or folder", missing[0])
    if not files:
        raise UserError(
            f"No audio files ({','.join(sorted(exts))}) found in "
            f"{' '.join(args.inputs)}; pick other inputs or --ext."
        )
    out = Path(args.output_dir)
    if out.is_symlink():
        raise UserError(
            f"-o {out} is a link: outputs are never written through links; give the real folder."
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file, not a folder: choose an output folder.")
    for arg in args.inputs:
        if Path(arg).is_dir() and inside(out, arg):
            raise UserError(
                f"-o {out} is inside the input folder {arg}: a rerun would "
                "separate the outputs too; choose an output folder outside it."
            )
    for arg in missing:
        logger.error("Skipped %s: no such file or folder.", arg)
    model = load_model(args, trust_remote_code=args.trust_model)
    if args.stream:
        model.stream()  # a model that cannot stream is refused here, once
    done, skipped, failed, seen, told_rate = 0, 0, len(missing), set(), False
    for path, rel in tqdm(files, desc="separating", unit="file", dynamic_ncols=True):
        targets = source_paths(rel, out / rel.parent, model.num_spks)
        if targets[0] in seen:
            logger.error("Skipped %s: same output name as another input.", path)
            failed += 1
            continue
        seen.add(targets[0])
        if not args.force and all(t.is_file() for t in targets):  # a complete set
            logger.warning("Skipped %s: %s exists (use --force).", path, targets[0])
            skipped += 1
            continue
        linked = _linked_folder(out, rel.parent)
        if linked is not None:
            logger.error(
                "Skipped %s: its output folder %s is a link; outputs are never "
                "written through links.",
                path,
                linked,
            )
            failed += 1
            continue
        if args.sample_rate == "model" and not told_rate:
            told_rate = _tell_output_rate(path, model.sample_rate)
        try:
            model.separate_file(
                path,
                chunk_seconds=args.chunk_seconds,
                overlap=args.overlap,
                normalize=args.normalize,
                output_dir=out / rel.parent,
                output_rate=args.sample_rate,
                max_samples=int(args.max_hours * 3600 * 16000),
                stream=args.stream,
            )
            done += 1
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # every next file would fail too
                raise UserError(
                    f"{' '.join(str(e.strerror).split())}: {done} files "
                    f"separated so far are kept in {out}; free some space and "
                    "rerun (finished outputs are skipped)."
                ) from None
            logger.error("Skipped %s: %s", path, " ".join(str(e).split()))
            failed += 1
        except (UserError, ValueError, RuntimeError, MemoryError) as e:
            logger.error("Skipped %s: %s", path, " ".join(str(e).split()))
            failed += 1
    logger.info(
        "Done: %d separated, %d skipped (outputs exist), %d failed%s",
        done,
        skipped,
        failed,
        f" -> {out}" if out.is_dir() else "; nothing written",
    )
    return 1 if failed else 0


def _tell_output_rate(path, model_rate):
    """Say once that outputs come at the model's rate when an input has another; True once said."""
    from sb_mamba.audio import AudioError, audio_info

    try:
        rate = audio_info(path).samplerate
    except AudioError:
        return False  # reported when the file is separated
    if rate != model_rate:
        logger.info(
            "The outputs are written at %d Hz, the model's rate (%s is at %d Hz); "
            "--sample-rate input writes them at each input's rate.",
            model_rate,
            path,
            rate,
        )
        return True
    return False


# ------------------------------------------------------------ dispatch
# name -> (module with add_arguments(parser) and run(args) -> int, summary)
COMMANDS = {
    "separate": ("sb_mamba.cli", "separate the speakers of audio files"),
    "export": (
        "sb_mamba.inference.export",
        "export a trained recipe to a model folder (hub layout)",
    ),
    "make-mixtures": (
        "sb_mamba.dataio.generate",
        "generate a WHAMR!- or Echo2Mix-style dataset from speech",
    ),
    "make-rir-bank": ("sb_mamba.dataio.rir_bank", "simulate or index room impulse responses"),
    "convert": (
        "sb_mamba.inference.convert",
        "convert an official SPMamba / SepMamba checkpoint to a model folder",
    ),
    "stream": (
        "sb_mamba.inference.stream_cli",
        "separate a live mixture: raw 16-bit PCM on stdin -> the speakers as "
        "interleaved channels on stdout (causal models)",
    ),
    "migrate": (
        "sb_mamba.modelfolder",
        "rewrite an old-layout model folder (hyperparams.yaml + separator.ckpt) "
        "as config.json + separator.safetensors",
    ),
}


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line and exit status 2."""

    def error(self, message):
        self.exit(USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command=None):
    """The ``sb-mamba`` parser; only ``command``'s module is imported.

    Arguments
    ---------
    command : str, optional
        The subcommand to add the arguments of (all are listed either way).

    Returns
    -------
    argparse.ArgumentParser

    Example
    -------
    >>> build_parser("separate").parse_args(["separate", "a.wav", "-o", "out"]).inputs
    ['a.wav']
    """
    parser = _Parser(
        prog="sb-mamba",
        description="sb_mamba: state-space speech "
        "separation (SepMamba, SPMamba, S4M) for SpeechBrain.",
    )
    from importlib.metadata import version

    parser.add_argument("--version", action="version", version=f"sb-mamba {version('sb_mamba')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(run=mod.run)
    return parser


def main(argv=None):
    """``sb-mamba COMMAND ...``; returns the exit status (see the error policy)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    # one logging set-up for every subcommand: a command with --verbose shows its details
    # only then; one without shows its own module's INFO lines (what it wrote)
    own = () if hasattr(args, "verbose") else (COMMANDS[args.command][0],)
    restore = setup_cli_logging(getattr(args, "verbose", False), always=(*ALWAYS_INFO, *own))
    try:
        return run_with_policy(
            lambda: args.run(args),
            lambda e, message: print(f"sb-mamba {args.command}: error: {message}", file=sys.stderr),
        )
    except KeyboardInterrupt:
        print(
            f"sb-mamba {args.command}: interrupted (Ctrl-C); finished outputs are kept.",
            file=sys.stderr,
        )
        return INTERRUPTED
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
