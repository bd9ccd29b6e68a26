"""Turn a recipe's output folder into a hub-layout model folder (and upload it).

::

    sb-mamba export results/sepmamba/1234 pretrained/sepmamba-librimini-8k
    sb-mamba export results/sepmamba/1234 out/ --fp16 --upload me/sepmamba-x

The target folder is what :class:`sb_mamba.inference.MambaSeparator` loads::

    hyperparams.yaml        inference-only (sb_mamba / SpeechBrain classes)
    separator.ckpt          state_dict of the best checkpoint (max "si-snr")
    README.md               model card (results, size, usage, license)
    hyperparams_train.yaml  the training hyperparameters, as resolved
    test_results.csv        if the recipe wrote one

How the inference YAML is made: the training YAML (by default the copy that
SpeechBrain wrote into the output folder, with every ``!ref`` and
``!include:`` resolved; a raw recipe YAML works too) is parsed as a YAML
tree **without building anything** (:mod:`sb_mamba.modelspec`). Its
``modules: separator:`` node names the class, which must resolve to one of
sb_mamba's separators, and the arguments the run gave it. The separator is
built from them directly (no YAML code), the checkpoint is loaded with
``strict=True``, and the inference YAML is written from what the model says
about itself (``get_model_args()``: every constructor argument, defaults
included; ``ssm_backend`` is set to ``auto`` so that a GPU-trained model runs
on CPU). That YAML is loaded back and must take the checkpoint too, so a
folder that would not load is never written.

Authors
-------
 * sb_mamba developers
"""

import csv
import io
import json
import logging
import math
import shutil
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.logger import get_logger

from sb_mamba.inference.separator import load_weights
from sb_mamba.modelspec import build_separator, load_training_tree, separator_spec

logger = get_logger(__name__)

PAPERS = {
    "SepMamba": "Avenstrup et al., SepMamba, ICASSP 2025, https://arxiv.org/abs/2410.20997",
    "SPMamba": "Li et al., SPMamba, ICME 2025, https://arxiv.org/abs/2404.02063",
    "S4M": "Chen et al., S4M, Interspeech 2023, https://arxiv.org/abs/2305.16932",
}


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


def _yaml_value(v):
    """A plain Python value as HyperPyYAML text (floats always keep a dot)."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        if not math.isfinite(v):
            return {math.inf: ".inf", -math.inf: "-.inf"}.get(v, ".nan")
        r = repr(float(v))
        mant, _, exp = r.partition("e")
        mant = mant if "." in mant else mant + ".0"
        return mant + ("e" + (exp if exp[0] in "+-" else "+" + exp) if exp else "")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def inference_yaml(cls, kwargs, sample_rate, num_spks, origin=""):
    """Text of the inference ``hyperparams.yaml``.

    Example
    -------
    >>> text = inference_yaml("torch.nn.Identity", {}, 8000, 2)
    >>> sorted(load_hyperpyyaml(text))
    ['modules', 'num_spks', 'pretrainer', 'sample_rate', 'separator']
    """
    bar = "# " + "#" * 76
    lines = [
        bar,
        f"# Model: {cls.rsplit('.', 1)[-1]} ({cls}), {num_spks} speakers, "
        f"{sample_rate} Hz",
        "# Inference hyperparameters of sb_mamba.inference.MambaSeparator,",
        "# written by sb_mamba.inference.export",
        *([f"# from {origin}"] if origin else []),
        "#   pip install sb_mamba",
        "#   MambaSeparator.from_hparams(source=<this folder or hub id>, savedir=...)",
        bar,
        "",
        f"sample_rate: {int(sample_rate)} # Hz; inputs are resampled to this rate",
        f"num_spks: {int(num_spks)} # number of output sources",
        "",
        "# The separator as trained (every constructor argument, as the model reports it)",
        f"separator: !new:{cls}",
        *(f"    {k}: {_yaml_value(v)}" for k, v in kwargs.items()),
        "",
        "modules:",
        "    separator: !ref <separator>",
        "",
        "# Loads <source>/separator.ckpt (SpeechBrain's default path for a loadable)",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        "        separator: !ref <separator>",
        "",
    ]
    return "\n".join(lines)


def read_test_results(path):
    """The ``avg`` row of a ``test_results.csv`` as floats."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("snt_id") == "avg":
                return {k: float(v) for k, v in row.items() if k != "snt_id"}
    raise ValueError(f"{path} has no 'avg' row.")


def model_card(name, cls, params, sample_rate, num_spks, results, ckpt_note,
               fp16, license, notes="", train_yaml=True, license_text=None):
    """Markdown model card with HuggingFace front matter (``notes``: extra markdown).

    ``results``: the ``avg`` row (dict), a markdown line, or None.
    ``train_yaml``: mention ``hyperparams_train.yaml`` (an exported training
    run has one). ``license_text``: the body of the License section (default:
    sb_mamba's code licence, the weights' ``license`` and the data note).
    """
    short = cls.rsplit(".", 1)[-1]
    rows = ["Results not given (pass test_results=...)."]
    if isinstance(results, str):
        rows = [results]
    elif results:
        rows = [
            "Test set (`avg` row of `test_results.csv`), in dB:", "",
            "| SI-SNR | SI-SNRi | SDR | SDRi |", "|---|---|---|---|",
            "| " + " | ".join(f"{results.get(k, float('nan')):.2f}"
                             for k in ("si-snr", "si-snr_i", "sdr", "sdr_i")) + " |",
        ]
    return "\n".join([
        "---", f"license: {license}", "library_name: speechbrain",
        "pipeline_tag: audio-to-audio",
        "tags: [audio-source-separation, speech-separation, mamba, sb_mamba]",
        "---", "", f"# {name}: {short} speech separation "
        f"({num_spks} speakers, {sample_rate / 1000:g} kHz)", "", *rows, "",
        f"- Model: `{cls}`, {params / 1e6:.2f} M parameters.",
        f"- Sample rate: {sample_rate} Hz (inputs are downmixed and resampled).",
        f"- Checkpoint: {ckpt_note}"
        + (" (stored in fp16, loaded as fp32)." if fp16 else "."),
        f"- Paper: {PAPERS.get(short, 'see the sb_mamba documentation')}.",
        "", "## Usage", "", "```bash", "pip install sb_mamba", "```", "",
        "```python", "from sb_mamba.inference import MambaSeparator", "",
        f'model = MambaSeparator.from_hparams(source="<this repo or folder>", '
        f'savedir="pretrained_models/{name}")',
        'est = model.separate_file("mixture.wav", output_dir="separated")  '
        f"# [1, T, {num_spks}]",
        "# long recordings: chunked overlap-add with speaker alignment",
        'est = model.separate_file("long.wav", chunk_seconds=8, overlap=0.5)', "```",
        "", "Command line: `sb-mamba separate <model> recordings/ -o separated "
        "--chunk-seconds 8`.", "",
        *(["`hyperparams_train.yaml` holds the training hyperparameters.", ""]
          if train_yaml else []),
        *([notes.strip(), ""] if notes and notes.strip() else []),
        "## License", "",
        license_text or f"Code: Apache-2.0 (sb_mamba). Weights: {license}. The weights "
        "derive from the training data; check its license too (e.g. LibriSpeech is "
        "CC BY 4.0, WSJ0 needs an LDC license).", "",
    ])


def export_model(recipe_output_folder, target_dir, hparams_file=None, fp16=False,
                 test_results=None, model_name=None, license="apache-2.0", notes=""):
    """Write a hub-layout model folder from a recipe's output folder.

    Arguments
    ---------
    recipe_output_folder : str or Path
        Holds ``hyperparams.yaml`` (SpeechBrain's copy), ``save/CKPT+*/``
        and optionally ``test_results.csv``.
    target_dir : str or Path
        Created (files in it are overwritten).
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
        raise FileNotFoundError(f"{hparams_file} (training hyperparameters) not found.")
    tree = load_training_tree(hparams_file)
    cls, kwargs = separator_spec(tree)
    args = build_separator(cls, kwargs).get_model_args()  # self-described
    if "ssm_backend" in args:
        args["ssm_backend"] = "auto"
    sample_rate = int(tree.get("sample_rate", kwargs.get("sample_rate", 8000)))
    num_spks = int(tree.get("num_spks", kwargs.get("num_spks", 2)))
    save = out / "save" if (out / "save").is_dir() else out
    ckpt = find_best_checkpoint(save)
    if "separator" not in ckpt.paramfiles:
        raise FileNotFoundError(f"{ckpt.path} has no separator.ckpt.")
    origin = f"{hparams_file.name} and {ckpt.path.name}"  # no local paths
    text = inference_yaml(cls, args, sample_rate, num_spks, origin)
    state = load_weights(ckpt.paramfiles["separator"])
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model = load_hyperpyyaml(io.StringIO(text))["separator"]
    model.load_state_dict(state, strict=True)  # the folder must load
    params = sum(p.numel() for p in model.parameters())

    if isinstance(test_results, dict):
        results = test_results
    else:
        csv_file = Path(test_results or out / "test_results.csv")
        results = read_test_results(csv_file) if csv_file.is_file() else None
        if test_results is not None and results is None:
            raise FileNotFoundError(f"{csv_file} not found.")
    target.mkdir(parents=True, exist_ok=True)
    (target / "hyperparams.yaml").write_text(text)
    torch.save(state, target / "separator.ckpt")
    shutil.copyfile(hparams_file, target / "hyperparams_train.yaml")
    if not isinstance(test_results, dict) and results is not None:
        shutil.copyfile(csv_file, target / "test_results.csv")
    note = f"{ckpt.path.name}, validation SI-SNR {ckpt.meta['si-snr']:.2f} dB"
    (target / "README.md").write_text(model_card(
        model_name or target.resolve().name, cls, params, sample_rate, num_spks,
        results, note, fp16, license, notes))
    logger.info("Exported %s (%s) to %s.", cls, ckpt.path.name, target)
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

    for name in ("hyperparams.yaml", "separator.ckpt", "README.md"):
        if not (Path(target_dir) / name).is_file():
            raise FileNotFoundError(f"{target_dir} has no {name}: export it first.")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(target_dir), repo_id=repo_id,
                             repo_type="model", commit_message="Upload sb_mamba model")


def add_arguments(p):
    """The arguments of ``sb-mamba export``."""
    p.add_argument("recipe_output_folder")
    p.add_argument("target_dir")
    p.add_argument("--hparams-file",
                   help="training YAML (default: OUTPUT/hyperparams.yaml)")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16")
    p.add_argument("--test-results", help="test_results.csv (default: OUTPUT's)")
    p.add_argument("--name", help="model card title")
    p.add_argument("--license", default="apache-2.0", help="license of the weights")
    p.add_argument("--notes", metavar="FILE", help="markdown added to the model card")
    p.add_argument("--upload", metavar="REPO_ID", help="upload to this HF model repo")
    p.add_argument("--token", help="HuggingFace token")


def run(args):
    """``sb-mamba export OUTPUT_FOLDER TARGET [--fp16] [--upload REPO]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.notes and not Path(args.notes).is_file():
        raise FileNotFoundError(2, "No such notes file", args.notes)
    notes = Path(args.notes).read_text() if args.notes else ""
    target = export_model(args.recipe_output_folder, args.target_dir,
                          hparams_file=args.hparams_file, fp16=args.fp16,
                          test_results=args.test_results, model_name=args.name,
                          license=args.license, notes=notes)
    if args.upload:
        upload_to_hub(target, args.upload, token=args.token)
    return 0
