"""The package's layers import only downwards, and nothing climbs out of it.

The table is the one of README's "Architecture" section: each part of
``sb_mamba`` names the parts it may import. A module's imports are read from
its syntax tree (top level and inside functions), so a lazy import counts.
"""

import ast
import re
from pathlib import Path

import sb_mamba
from tests.helpers import ROOT

PACKAGE = Path(sb_mamba.__file__).parent

GROUND = {"audio", "errors", "logs", "metrics", "resources", "hparams", "pretrained"}
MAY_IMPORT = {  # part -> parts of sb_mamba it may import (itself always)
    "ground": {"errors"},
    "nnet": set(),
    "lobes": {"nnet"},
    "dataio": {"audio", "errors"},
    "training": GROUND | {"nnet", "lobes", "dataio", "modelfolder"},
    "inference": GROUND | {"nnet", "lobes", "modelfolder"},
    "modelfolder": {"audio", "errors", "logs", "lobes", "resources"},
    "cli": GROUND | {"inference", "dataio", "modelfolder", "nnet"},
}


def _part(module_path):
    rel = module_path.relative_to(PACKAGE).with_suffix("")
    head = rel.parts[0]
    if head in GROUND or head == "__init__":
        return "ground"
    return head


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _modules():
    return [p for p in PACKAGE.rglob("*.py") if "csrc" not in p.parts]


def test_layers_import_only_downwards():
    wrong = []
    for path in _modules():
        part = _part(path)
        allowed = MAY_IMPORT[part] | {part}
        for name in _imports(path):
            if not name.startswith("sb_mamba."):
                continue
            target = name.split(".")[1]
            target = "ground" if target in GROUND and part == "ground" else target
            if target not in allowed and not (part == "ground" and target == "ground"):
                wrong.append(f"{path.relative_to(PACKAGE)} ({part}) imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_inference_never_imports_dataio():
    for path in (PACKAGE / "inference").rglob("*.py"):
        assert not [n for n in _imports(path) if n.startswith("sb_mamba.dataio")], path


def test_nothing_climbs_out_of_the_package():
    climbing = re.compile(r"parents\[\d\]|\.parent\.parent|os\.pardir|['\"]\.\.['\"/]")
    found = [
        f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
        for p in _modules()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if climbing.search(line) and not line.lstrip().startswith(("#", ">>>"))
    ]
    assert not found, "\n".join(found)


# bench_reverb.py's default output path: README names it and says that run was not kept
NOT_KEPT = {"bench_reverb.json"}


def test_benchmark_figures_cited_in_readme_are_in_the_repository():
    """A JSON or PNG under benchmarks/results/ that README or docs/ quote must be committed (a
    clean clone, as in CI, lacks anything left untracked or ignored)."""
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    cited = set()
    for stem, ext in re.findall(r"benchmarks/results/([\w.-]+?)\.(\{json,png\}|json|png)", readme):
        cited |= {f"{stem}.{e}" for e in (("json", "png") if ext.startswith("{") else (ext,))}
    assert cited, "README quotes no benchmark figure file"
    missing = sorted(
        n for n in cited - NOT_KEPT if not (ROOT / "benchmarks" / "results" / n).is_file()
    )
    assert not missing, f"README cites uncommitted benchmark files: {missing}"
