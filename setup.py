"""Install script of sb_mamba (``pip install -e .``)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(
    r'__version__ = "([^"]+)"', (here / "sb_mamba" / "__init__.py").read_text()
).group(1)

setup(
    name="sb_mamba",
    version=version,
    description=(
        "SpeechBrain recipes and models for state-space (Mamba / S4) speech "
        "separation: SepMamba, SPMamba and S4M, on CPU and GPU."
    ),
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # hparams/ and pretrained/ stay at the top of the repository (where users
    # look for them) and ship inside the package as sb_mamba.hparams and
    # sb_mamba.pretrained, read through importlib.resources
    # (sb_mamba.resources), so a wheel has the model fragments and the demo.
    packages=find_packages(include=["sb_mamba", "sb_mamba.*"])
    + ["sb_mamba.hparams", "sb_mamba.pretrained"],
    package_dir={
        "sb_mamba.hparams": "hparams",
        "sb_mamba.pretrained": "pretrained",
    },
    package_data={
        "sb_mamba": ["nnet/csrc/*.cpp", "nnet/csrc/*.h"],
        "sb_mamba.hparams": ["*.md", "models/*.yaml"],
        "sb_mamba.pretrained": [
            "*.md",
            "*/*.json",
            "*/*.safetensors",
            "*/*.yaml",
            "*/*.ckpt",
            "*/*.md",
            "*/*.csv",
            "*/*.png",
            "*/*.flac",
            "*/*.wav",
            "*/LICENSE*",
        ],
    },
    install_requires=[
        # torch 2.14.1 + torchaudio 2.11.0 is the tested pair (see README).
        # >= 2.6: torch.load defaults to weights_only=True, also inside
        # SpeechBrain (checkpoint recovery); sb_mamba asks for it explicitly
        "torch>=2.6,<2.15",
        "torchaudio>=2.1",
        "speechbrain>=1.0.0,<1.2",
        "hyperpyyaml>=1.2",
        "pyroomacoustics>=0.7",  # 0.4.x broke WHAMR!-style RIR generation
        "soundfile>=0.12",
        "numpy>=1.24",
        "scipy>=1.10",
        "ninja>=1.11",  # JIT build of the CPU scan kernel
        "tqdm>=4.60",
        "fast-bss-eval>=0.1.4",  # BSS-eval SDR in test_results.csv
        "huggingface_hub>=0.20",  # hub models (download / upload)
        "safetensors>=0.4",  # model folder weights (no pickle)
    ],
    entry_points={
        "console_scripts": [
            "sb-mamba=sb_mamba.cli:main",
        ]
    },
    extras_require={
        # No CUDA version pair has been run here yet (no GPU): see README,
        # "Installing the CUDA kernels", and benchmarks/gpu_check.py. The
        # published SepMamba / SPMamba code used mamba-ssm 1.2.0.post1.
        "cuda": ["mamba-ssm>=1.2.0.post1", "causal-conv1d>=1.2.0"],
        # ruff pinned: its formatter's output changes between versions
        "dev": ["pytest>=7", "ruff==0.17.6", "mir_eval>=0.7", "matplotlib>=3.5"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
