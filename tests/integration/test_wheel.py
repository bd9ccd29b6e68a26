"""The wheel carries what the package reads: model fragments, the demo model,
the CPU kernel's sources, and the console commands; installed, it runs README's
Python example outside the clone."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import soundfile as sf

from sb_mamba.resources import hparams_path, pretrained_path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_fragments_demo_model_and_commands(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sb_mamba", "hparams", "pretrained"):
        shutil.copytree(
            ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sb_mamba-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    fragments = sorted(p.name for p in Path(hparams_path("models")).glob("*.yaml"))
    assert len(fragments) >= 4
    for name in fragments:
        assert f"sb_mamba/hparams/models/{name}" in names
    demo = Path(pretrained_path())
    for name in ("config.json", "separator.safetensors", "README.md", "test_mixture.wav"):
        assert f"sb_mamba/pretrained/{demo.name}/{name}" in names
    assert any(n.startswith("sb_mamba/nnet/csrc/") and n.endswith(".cpp") for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sb-mamba = sb_mamba.cli:main" in text and "sb-mamba-" not in text
    assert not any(n.startswith(("tests/", "recipes/", "benchmarks/")) for n in names)


def _readme_python_example():
    """The README's Python example of separating a file (the block that loads a model)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if "MambaSeparator.from_hparams" in b and "separate_file" in b]
    return code


def test_readme_example_runs_from_the_installed_wheel(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sb_mamba", "hparams", "pretrained"):
        shutil.copytree(
            ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    site = tmp_path / "site"  # the wheel's files only; the dependencies are this venv's
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"  # no clone here: the shipped model comes from the wheel
    work.mkdir()
    shutil.copy(Path(pretrained_path()) / "test_mixture.wav", work / "meeting.wav")
    code = "import sb_mamba; print('FROM', sb_mamba.__file__)\n" + _readme_python_example()
    code += "\nprint('SHAPE', tuple(est.shape))\n"
    # the pure PyTorch scan: compiling the CPU kernel (tested elsewhere) would add minutes
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", SB_MAMBA_NO_CPU_KERNEL="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"FROM {site}" in proc.stdout, proc.stdout
    frames = sf.info(str(work / "meeting.wav")).frames
    assert f"SHAPE (1, {frames}, 2)" in proc.stdout, proc.stdout
    for k in (1, 2):
        out, rate = sf.read(str(work / "out" / f"meeting_s{k}.wav"))
        assert rate == 8000 and len(out) == frames and abs(out).max() > 0
