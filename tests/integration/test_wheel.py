"""The wheel carries what the package reads: model fragments, the demo model,
the CPU kernel's sources, and the console commands."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sb_mamba.resources import hparams_path, pretrained_path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_fragments_demo_model_and_commands(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("sb_mamba", "hparams", "pretrained"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
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
    for command in ("sb-mamba ", "sb-mamba-separate", "sb-mamba-export",
                    "sb-mamba-make-mixtures", "sb-mamba-make-rir-bank"):
        assert command in text
    assert not any(n.startswith(("tests/", "recipes/", "benchmarks/")) for n in names)
