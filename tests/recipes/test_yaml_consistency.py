"""Every key of every recipe YAML is used: by another key, the recipe code or SpeechBrain.

Authors
-------
 * sb_mamba developers
"""

import re
from pathlib import Path

import pytest
import speechbrain as sb

ROOT = Path(__file__).resolve().parents[2]
RECIPE_YAMLS = sorted(ROOT.glob("recipes/*/separation/hparams/*.yaml"))
CODE = "\n".join(
    p.read_text()
    for p in [
        ROOT / "sb_mamba" / "training" / "brain.py",
        ROOT / "sb_mamba" / "training" / "recipe.py",
        *ROOT.glob("recipes/*/separation/train.py"),
    ]
)
# Keys SpeechBrain's Brain reads from the hparams itself (run options).
SB_RUN_OPTS = set(sb.core.RunOptions().as_dict())


def top_level_keys(text):
    return re.findall(r"^([A-Za-z_][\w]*)\s*:", text, flags=re.M)


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: f"{p.parts[-4]}/{p.name}")
def test_every_key_is_used(path):
    text = path.read_text()
    unused = []
    for key in top_level_keys(text):
        if key.startswith("__") or key in SB_RUN_OPTS:
            continue
        in_yaml = re.search(rf"<{key}[\]>\[]", text)
        in_code = re.search(rf"[\"']{key}[\"']|\.{key}\b", CODE)
        if not (in_yaml or in_code):
            unused.append(key)
    assert not unused, f"{path}: keys used by nothing: {unused}"


def test_there_are_recipes():
    assert len(RECIPE_YAMLS) >= 1
