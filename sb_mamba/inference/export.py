"""Turn a recipe's output folder into a model folder (and upload it).

::

    sb-mamba export results/sepmamba/1234 pretrained/sepmamba-librimini-8k
    sb-mamba export results/sepmamba/1234 out/ --fp16 --upload me/sepmamba-x

The target folder is what :class:`sb_mamba.inference.MambaSeparator` loads
(the layout of :mod:`sb_mamba.modelfolder`, which writes it)::

    config.json             separator class, its arguments, sample_rate, num_spks
    separator.safetensors   state_dict of the best checkpoint (max "si-snr")
    README.md               model card (results, size, usage, license)
    hyperparams_train.yaml  the training hyperparameters (a record, never run)
    test_results.csv        if the recipe wrote one

How the config is made: the training YAML (by default the copy that
SpeechBrain wrote into the output folder; a raw recipe YAML works too) is
read as data (:func:`sb_mamba.modelfolder.read_run_hparams`: composed into
nodes, ``!ref``/``!include:`` followed, no other tag built, so an
``!apply:`` or ``!applyref:`` in it never runs). Its ``modules: separator:``
names the class, which must be one of sb_mamba's separators, and the
arguments the run gave it. The separator is built from them directly, and
``config.json`` records what the model says about itself
(``get_model_args()``: every constructor argument, defaults included; the
scan backend is a run option, never stored). The
best checkpoint's weights (``torch.load(weights_only=True)``) must load into
it (strict) before anything is written, and the folder is written
atomically (:func:`sb_mamba.modelfolder.write_folder`).

Authors
-------
 * sb_mamba developers
"""

from pathlib import Path

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.logger import get_logger

from sb_mamba import modelfolder
from sb_mamba.errors import UserError
from sb_mamba.modelfolder import model_card, read_test_results

logger = get_logger(__name__)
__all__ = [
    "export_model",
    "find_best_checkpoint",
    "model_card",
    "read_test_results",
    "upload_to_hub",
]


def find_best_checkpoint(save_folder, key="si-snr"):
    """The SpeechBrain checkpoint with the largest ``key`` in its meta.

    Arguments
    ---------
    save_folder : str or Path
        Folder holding ``CKPT+*/`` checkpoints.
    key : str
        Meta key, larger is better (checkpoints without it are ignored).

    Returns
    -------
    speechbrain.utils.checkpoints.Checkpoint
    """
    ckpt = Checkpointer(save_folder).find_checkpoint(max_key=key)
    if ckpt is None:
        raise FileNotFoundError(
            f"No checkpoint with a '{key}' meta in {save_folder} (CKPT+*/CKPT.yaml)."
        )
    return ckpt


def export_model(
    recipe_output_folder,
    target_dir,
    hparams_file=None,
    fp16=False,
    test_results=None,
    model_name=None,
    license="apache-2.0",
    notes="",
):
    """Write a model folder from a recipe's output folder.

    Arguments
    ---------
    recipe_output_folder : str or Path
        Holds ``hyperparams.yaml`` (SpeechBrain's copy), ``save/CKPT+*/``
        and optionally ``test_results.csv``.
    target_dir : str or Path
        Created if needed; its model files are replaced, other files kept.
        Refused if it is (or holds) the output folder or the training YAML.
    hparams_file : str or Path, optional
        Training YAML to read instead of ``<output>/hyperparams.yaml``.
    fp16 : bool
        Store the weights as float16 (half the size; loaded back as fp32).
    test_results : str, Path or dict, optional
        ``test_results.csv`` (default: the output folder's, if any) or its
        ``avg`` row as a dict (``si-snr``, ``si-snr_i``, ``sdr``, ``sdr_i``).
    model_name : str, optional
        Title of the model card (default: the target folder's name).
    license : str
        License of the weights, for the model card.
    notes : str
        Markdown added to the model card (e.g. a ``## Training`` section).

    Returns
    -------
    Path
        ``target_dir``.
    """
    out, target = Path(recipe_output_folder), Path(target_dir)
    hparams_file = Path(hparams_file or out / "hyperparams.yaml")
    if not hparams_file.is_file():
        raise FileNotFoundError(2, "Training hyperparameters not found", str(hparams_file))
    config = modelfolder.read_run_hparams(hparams_file)
    net = modelfolder.build_separator(config.separator_class, config.separator_args)
    args = net.get_model_args()  # self-described: every argument, defaults included
    save = out / "save" if (out / "save").is_dir() else out
    ckpt = find_best_checkpoint(save)
    if "separator" not in ckpt.paramfiles:
        raise FileNotFoundError(2, "The checkpoint has no separator.ckpt", str(ckpt.path))
    config = modelfolder.ModelConfig(
        config.separator_class,
        args,
        config.sample_rate,
        config.num_spks,
        origin=f"{hparams_file.name} and {ckpt.path.name}",
    )  # no local paths
    state, averaged = modelfolder.read_checkpoint_weights(ckpt.paramfiles)

    files = {modelfolder.TRAIN_HPARAMS: hparams_file}
    if isinstance(test_results, dict):
        results = test_results
    else:
        csv_file = Path(test_results or out / modelfolder.RESULTS)
        results = read_test_results(csv_file) if csv_file.is_file() else None
        if test_results is not None and results is None:
            raise FileNotFoundError(2, "No such test results file", str(csv_file))
        if results is not None:
            files[modelfolder.RESULTS] = csv_file
    params = sum(p.numel() for p in net.parameters())
    note = f"{ckpt.path.name}, validation SI-SNR {ckpt.meta['si-snr']:.2f} dB"
    if averaged:
        note += " (weights averaged over training steps, ema_decay)"
    card = model_card(
        model_name or target.resolve().name,
        config.separator_class,
        params,
        config.sample_rate,
        config.num_spks,
        results,
        note,
        fp16,
        license,
        notes,
    )
    modelfolder.write_folder(
        target, config, state, card=card, files=files, fp16=fp16, sources=[out, ckpt.path]
    )
    logger.info("Exported %s (%s) to %s.", config.separator_class, ckpt.path.name, target)
    return target


def upload_to_hub(target_dir, repo_id, token=None, private=False):
    """Create (if needed) the HuggingFace model repo and upload the folder.

    Arguments
    ---------
    target_dir : str or Path
        An exported folder.
    repo_id : str
        ``owner/name``.
    token : str, optional
        HuggingFace token (default: the logged-in one).
    private : bool
        Create the repo as private.

    Returns
    -------
    The ``upload_folder`` commit info.
    """
    from huggingface_hub import HfApi

    if modelfolder.layout(target_dir) != "new":
        raise UserError(
            f"{target_dir} is not a model folder in the current layout (no "
            f"{modelfolder.CONFIG}): export it (or sb-mamba migrate it) first."
        )
    modelfolder.read_folder(target_dir)  # it must read
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(target_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload sb_mamba model",
    )


def add_arguments(p):
    """The arguments of ``sb-mamba export``."""
    p.add_argument("recipe_output_folder")
    p.add_argument("target_dir")
    p.add_argument("--hparams-file", help="training YAML (default: OUTPUT/hyperparams.yaml)")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16")
    p.add_argument("--test-results", help="test_results.csv (default: OUTPUT's)")
    p.add_argument("--name", help="model card title")
    p.add_argument("--license", default="apache-2.0", help="license of the weights")
    p.add_argument("--notes", metavar="FILE", help="markdown added to the model card")
    p.add_argument("--upload", metavar="REPO_ID", help="upload to this HF model repo")
    p.add_argument("--token", help="HuggingFace token")


def run(args):
    """``sb-mamba export OUTPUT_FOLDER TARGET [--fp16] [--upload REPO]``."""
    if args.notes and not Path(args.notes).is_file():
        raise FileNotFoundError(2, "No such notes file", args.notes)
    notes = Path(args.notes).read_text() if args.notes else ""
    target = export_model(
        args.recipe_output_folder,
        args.target_dir,
        hparams_file=args.hparams_file,
        fp16=args.fp16,
        test_results=args.test_results,
        model_name=args.name,
        license=args.license,
        notes=notes,
    )
    if args.upload:
        upload_to_hub(target, args.upload, token=args.token)
    return 0
