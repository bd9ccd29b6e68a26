"""benchmarks/bench_causal_latency.py: two causal runs compared at one CPU budget."""

import importlib.util
import json

from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_causal_latency.py"
spec = importlib.util.spec_from_file_location("bench_causal_latency", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _run(folder, kernel, curve):
    """A run folder as the recipes write it: hyperparams.yaml and train_log.txt."""
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(
        f"model_causal: True\nmodel_kernel_size: {kernel}\nmodel_stride: 4\nsample_rate: 8000\n"
        "epoch_size: 4000\nbatch_size: 4\nsegment_seconds: 2.0\nlr: 0.002\nmodel: !include:x.yaml\n"
    )
    (folder / "train_log.txt").write_text(
        "".join(
            f"epoch: {e}, lr: 2.00e-03 - train loss: -1.0, train cpu-minutes: {m} - "
            f"valid loss: -1.0, valid si-snri: {v}\n"
            for e, (m, v) in enumerate(curve, 1)
        )
    )
    return folder


def test_compares_at_the_budget_both_reached(tmp_path):
    k8 = _run(tmp_path / "k8", 8, [(6.0, 1.0), (6.0, 2.0), (6.0, 2.5)])  # 0.1 CPU-h per epoch
    k16 = _run(tmp_path / "k16", 16, [(12.0, 1.5), (12.0, 3.0)])  # 0.2 per epoch: to 0.4 h
    out = tmp_path / "cmp"
    bench.main(["--run", f"kernel 8={k8}", "--run", f"kernel 16={k16}", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert abs(result["budget_cpu_hours"] - 0.3) < 1e-9  # k8's last epoch
    runs = result["runs"]
    assert (runs["kernel 8"]["lookahead_samples"], runs["kernel 16"]["lookahead_samples"]) == (
        147,
        315,
    )
    assert abs(runs["kernel 8"]["valid_si_snri_at_budget"] - 2.5) < 1e-9
    assert abs(runs["kernel 16"]["valid_si_snri_at_budget"] - 2.25) < 1e-9  # between 0.2 and 0.4 h
    table = out.with_suffix(".md").read_text()
    assert "| kernel 8 | 18.4 ms (147 samples) | 26.4 ms | 2.50 |" in table
    assert out.with_suffix(".png").stat().st_size > 10_000
