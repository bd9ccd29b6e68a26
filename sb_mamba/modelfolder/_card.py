"""The model card and the test results of a model folder.

Part of :mod:`sb_mamba.modelfolder` (see there).

Authors
-------
 * sb_mamba developers
"""

import csv

from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError
from sb_mamba.modelfolder._config import CONFIG, PAPERS, TRAIN_HPARAMS, WEIGHTS

logger = get_logger(__name__)


# ------------------------------------------------- results and model card
def read_test_results(path):
    """The ``avg`` row of a ``test_results.csv`` as floats.

    Example
    -------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "test_results.csv"
    >>> _ = path.write_text("snt_id,si-snr_i\\na,1\\navg,2.5\\n")
    >>> read_test_results(path)
    {'si-snr_i': 2.5}
    """
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("snt_id") == "avg":
                return {k: float(v) for k, v in row.items() if k != "snt_id"}
    raise UserError(f"{path} has no 'avg' row: give the test_results.csv a recipe wrote.")


def model_card(
    name,
    cls,
    params,
    sample_rate,
    num_spks,
    results,
    ckpt_note,
    fp16,
    license,
    notes="",
    train_yaml=True,
    license_text=None,
):
    """Markdown model card with HuggingFace front matter (``notes``: extra markdown).

    ``results``: the ``avg`` row (dict), a markdown line, or None.
    ``train_yaml``: mention ``hyperparams_train.yaml`` (an exported training
    run has one). ``license_text``: the body of the License section (default:
    sb_mamba's code licence, the weights' ``license`` and the data note).

    Example
    -------
    >>> card = model_card("m", "sb_mamba.lobes.sepmamba.SepMamba", 1e6, 8000, 2,
    ...                   None, "CKPT", False, "apache-2.0")
    >>> card.splitlines()[7]
    '# m: SepMamba speech separation (2 speakers, 8 kHz)'
    """
    short = cls.rsplit(".", 1)[-1]
    rows = ["Results not given (pass test_results=...)."]
    if isinstance(results, str):
        rows = [results]
    elif results:
        rows = [
            "Test set (`avg` row of `test_results.csv`), in dB:",
            "",
            "| SI-SNR | SI-SNRi | SDR | SDRi |",
            "|---|---|---|---|",
            "| "
            + " | ".join(
                f"{results.get(k, float('nan')):.2f}"
                for k in ("si-snr", "si-snr_i", "sdr", "sdr_i")
            )
            + " |",
        ]
    return "\n".join(
        [
            "---",
            f"license: {license}",
            "library_name: speechbrain",
            "pipeline_tag: audio-to-audio",
            "tags: [audio-source-separation, speech-separation, mamba, sb_mamba]",
            "---",
            "",
            f"# {name}: {short} speech separation "
            f"({num_spks} speakers, {sample_rate / 1000:g} kHz)",
            "",
            *rows,
            "",
            f"- Model: `{cls}`, {params / 1e6:.2f} M parameters.",
            f"- Sample rate: {sample_rate} Hz (inputs are downmixed and resampled).",
            f"- Checkpoint: {ckpt_note}" + (" (stored in fp16, loaded as fp32)." if fp16 else "."),
            f"- Paper: {PAPERS.get(short, 'see the sb_mamba documentation')}.",
            f"- Files: `{CONFIG}` (class, arguments, rate) and `{WEIGHTS}`: data only, "
            "loading runs no code from this folder.",
            "",
            "## Usage",
            "",
            "```bash",
            "pip install .  # in a clone of sb_mamba (it is not on PyPI yet)",
            "```",
            "",
            "```python",
            "from sb_mamba.inference import MambaSeparator",
            "",
            "model = MambaSeparator.from_hparams(",  # as ruff formats it (CI checks)
            '    source="<this repo or folder>",',
            f'    savedir="pretrained_models/{name}",',
            ")",
            'est = model.separate_file("mixture.wav", output_dir="separated")  '
            f"# [1, T, {num_spks}]",
            "# long recordings: chunked overlap-add with speaker alignment",
            'est = model.separate_file("long.wav", chunk_seconds=8, overlap=0.5)',
            "```",
            "",
            "Command line: `sb-mamba separate <model> recordings/ -o separated --chunk-seconds 8`.",
            "",
            *([f"`{TRAIN_HPARAMS}` holds the training hyperparameters.", ""] if train_yaml else []),
            *([notes.strip(), ""] if notes and notes.strip() else []),
            "## License",
            "",
            license_text
            or f"Code: Apache-2.0 (sb_mamba). Weights: {license}. The weights "
            "derive from the training data; check its license too (e.g. LibriSpeech is "
            "CC BY 4.0, WSJ0 needs an LDC license).",
            "",
        ]
    )
