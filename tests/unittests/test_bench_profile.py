"""benchmarks/profile_models.py and bench_models.py's precision specs."""

import importlib.util
import json
import sys

from sb_mamba.nnet.mamba import Mamba
from tests.helpers import ROOT


def _load(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # profile_models imports bench_models
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_profile_sees_the_fused_kernels(tmp_path):
    prof = _load("profile_models")
    out = tmp_path / "p"
    args = ["--models", "sepmamba_causal_s", "--threads", "1", "--seconds", "0.25"]
    prof.main([*args, "--out", str(out), "--png"])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    (row,) = rows
    ops = {o["op"] for o in row["ops"]}
    assert {"kernel::mamba_scan_fwd", "kernel::conv_silu_fwd"} <= ops  # outside ATen, recorded
    assert abs(sum(row["groups"].values()) - 1.0) < 1e-6
    assert row["groups"]["selective scan kernel"] > 0.05
    assert "kernel::mamba_scan_fwd" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_models_builds_int8_fragments():
    bench = _load("bench_models")
    model, sr = bench.build("sepmamba_causal_s@int8")
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    assert sr == 8000 and mixers and all(m._int8 is not None for m in mixers)
    fp32, _ = bench.build("sepmamba_causal_s")
    assert all(m._int8 is None for m in fp32.modules() if isinstance(m, Mamba))
