#!/usr/bin/env python3
"""Separation quality per CPU budget: which recipe learns fastest on a CPU.

Trains separators from a recipe YAML (default: the LibriMini SepMamba recipe)
with YAML overrides, each for a fixed **CPU budget** (process CPU time of one
thread: training steps and dynamic mixing count, evaluation does not), and
evaluates the fixed validation mixtures of held-out speakers at several points
of the budget, then the test mixtures (other held-out speakers). SpeechBrain's
own Conv-TasNet (``speechbrain.lobes.models.conv_tasnet.MaskNet`` with
``dual_path`` encoder/decoder, N=256, B=128, H=256, P=3, X=8, R=3) runs as the
peer through the same training step (the ``Separation`` brain's
``fit_batch``: loss thresholding, clipping, skipping), on the same data.

All runs go side by side, one process and one thread each, so they see the
same machine; the load average is sampled during the runs, and every other
process that used CPU meanwhile is listed in the output.

Schedules: a per-step scheduler (e.g. ``sb_mamba.training.schedulers.WarmupCosine``)
is stretched to the budget (its ``total_steps`` is set from the step rate of
the first 20 steps); SpeechBrain's ``ReduceLROnPlateau`` is stepped at each
epoch end on the epoch's mean training loss (no validation inside the
budget).

Usage (from the repository root)::

    python benchmarks/bench_quality_budget.py --budget-minutes 40 --peer \\
        --run sepmamba "{model_dim: 32, lr: 0.002}"
    python benchmarks/bench_quality_budget.py --budget-minutes 10 \\
        --run d32 "{model_dim: 32}" --run d64 "{model_dim: 64}" --no-test

Writes ``<out>.json`` (every curve point: CPU and wall minutes, steps, valid
SI-SNRi; test SI-SNRi/SDRi; load average; other processes) and ``<out>.png``
(valid SI-SNRi against CPU minutes, one curve per run). ``--eval-dir DIR``
also scores each trained model on a folder laid out ``mix/ s1/ s2/`` (same
file names, any sample rate).

Authors
-------
 * sb_mamba developers
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "recipes" / "LibriMini" / "separation"
DEFAULT_YAML = RECIPE_DIR / "hparams" / "sepmamba.yaml"
LIBRIMINI_DATA = ROOT / "recipes" / "LibriMini" / "data"
# YAML keys a recipe's train.py sets (by recipe folder), as the train.py files do
RECIPE_DEFAULTS = {
    "LibriMini": {"data_folder": str(LIBRIMINI_DATA)},
    "General": {
        "data_folder": str(ROOT.parent / "shared" / "data"),
        "librimini_folder": str(LIBRIMINI_DATA),
        "splits": str(ROOT / "recipes" / "General" / "meta" / "splits.json"),
    },
}
PEER = "convtasnet"
PEER_OVERRIDES = (
    "{segment_seconds: 2.0, batch_size: 4, lr: 0.001, lr_schedule: plateau}"  # the peer
)
SCHED_PROBE_STEPS = 20


# --------------------------------------------------------------- the peer
def conv_tasnet(num_spks=2, N=256, B=128, H=256, P=3, X=8, R=3, kernel_size=16):
    """SpeechBrain's Conv-TasNet as a ``mix [B, T] -> est [B, T, S]`` separator."""
    import torch
    from speechbrain.lobes.models.conv_tasnet import MaskNet
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    class ConvTasNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_spks = num_spks
            self.encoder = Encoder(kernel_size=kernel_size, out_channels=N)
            self.masknet = MaskNet(
                N, B, H, P, X, R, num_spks, norm_type="gLN", causal=False, mask_nonlinear="relu"
            )
            self.decoder = Decoder(
                in_channels=N,
                out_channels=1,
                kernel_size=kernel_size,
                stride=kernel_size // 2,
                bias=False,
            )

        def forward(self, mix):
            w = self.encoder(mix)  # [B, N, L]
            masks = self.masknet(w)  # [S, B, N, L]
            est = torch.stack([self.decoder(w * m) for m in masks], dim=-1)  # [B, T', S]
            T = mix.shape[1]
            return torch.nn.functional.pad(est, (0, 0, 0, max(0, T - est.shape[1])))[:, :T]

    return ConvTasNet()


# ------------------------------------------------------------ one worker
def recipe_of(yaml_file):
    """The recipe folder name of a recipe YAML (``recipes/<name>/separation/hparams/x.yaml``)."""
    return Path(yaml_file).resolve().parents[2].name


def load_hparams(yaml_file, overrides, output_folder):
    """The recipe's hparams with ``overrides`` (a YAML mapping, flow or block)."""
    import io

    from ruamel.yaml import YAML

    from sb_mamba.training.recipe import load_hparams as load_recipe

    rt = YAML()  # round trip: keeps !ref / !new: tags of the overrides
    merged = rt.load(overrides or "{}") or {}
    if not isinstance(merged, dict):
        raise SystemExit(f"overrides must be a YAML mapping, got {overrides!r}")
    merged["output_folder"] = str(output_folder)
    text = io.StringIO()
    rt.dump(merged, text)
    cwd = os.getcwd()
    os.chdir(Path(yaml_file).parent.parent)  # relative paths of the YAML start there
    try:  # the data folders, as the recipe's train.py passes them
        return load_recipe(yaml_file, text.getvalue(), RECIPE_DEFAULTS[recipe_of(yaml_file)])
    finally:
        os.chdir(cwd)


def si_snri_of(model, pairs, sample_rate):
    """Mean SI-SNRi (best permutation) of ``model`` on (mix, [sources]) paths."""
    import torch

    from sb_mamba.audio import read_audio
    from sb_mamba.metrics import pit_metric, sdr

    vals, sdri = [], []
    with torch.no_grad():
        for mix_path, src_paths in pairs:
            mix = read_audio(mix_path, sample_rate, resample_to_rate=True)[None]
            src = torch.stack(
                [read_audio(p, sample_rate, resample_to_rate=True) for p in src_paths], -1
            )[None]
            n = min(mix.shape[1], src.shape[1])
            mix, src = mix[:, :n], src[:, :n]
            est = model(mix).float()
            base_in = mix[..., None].expand_as(src)
            vals.append((pit_metric(src, est)[0] - pit_metric(src, base_in)[0]).item())
            sdri.append((sdr(src[0], est[0]).mean() - sdr(src[0], base_in[0]).mean()).item())
    return sum(vals) / len(vals), sum(sdri) / len(sdri)


def csv_pairs(csv_file, num_spks):
    import csv

    with open(csv_file, newline="") as f:
        return [
            (r["mix_wav"], [r[f"s{i + 1}_wav"] for i in range(num_spks)]) for r in csv.DictReader(f)
        ]


def dir_pairs(folder):
    """(mix, [s1, s2, ...]) of a ``mix/ s1/ s2/`` folder, by file name."""
    folder = Path(folder)
    spk_dirs = sorted(
        (d for d in folder.iterdir() if d.is_dir() and d.name[0] == "s" and d.name[1:].isdigit()),
        key=lambda d: int(d.name[1:]),
    )
    if not (folder / "mix").is_dir() or len(spk_dirs) < 2:
        raise SystemExit(f"--eval-dir {folder}: expected mix/ s1/ s2/ subfolders.")
    pairs = []
    for mix in sorted((folder / "mix").iterdir()):
        srcs = [d / mix.name for d in spk_dirs]
        if all(s.is_file() for s in srcs):
            pairs.append((str(mix), [str(s) for s in srcs]))
    if not pairs:
        raise SystemExit(f"--eval-dir {folder}: no file of mix/ has its s1/, s2/ files.")
    return pairs


def train_loader(brain, hp):
    """The dynamic-mixing loader, made by the brain as in the recipes.

    ``Separation.make_dataloader`` remembers the dataset, so that
    ``on_stage_start(TRAIN, epoch)`` draws new mixtures in every epoch
    (a bare DataLoader would repeat epoch 0's mixtures forever).
    """
    import speechbrain as sb

    return brain.make_dataloader(
        hp["dm_dataset"](),
        sb.Stage.TRAIN,
        batch_size=hp["batch_size"],
        shuffle=False,
        num_workers=0,
    )


def worker(spec):
    """Train one run for its CPU budget; writes ``spec['result']`` (JSON) as it goes."""
    import torch

    torch.set_num_threads(spec["threads"])
    import speechbrain as sb

    from sb_mamba.training.brain import Separation

    out = Path(spec["folder"])
    out.mkdir(parents=True, exist_ok=True)
    hp = load_hparams(spec["yaml"], spec["overrides"], out)
    if recipe_of(spec["yaml"]) == "General":  # its training set reads the prepared links
        from sb_mamba.dataio.general import prepare_general

        prepare_general(
            hp["data_folder"],
            hp["save_folder"],
            sample_rate=hp["sample_rate"],
            num_spks=hp["num_spks"],
            **hp["prepare_kwargs"],
        )
    torch.manual_seed(hp["seed"])
    if spec["name"] == PEER:
        modules = {"separator": conv_tasnet(num_spks=hp["num_spks"])}
    else:
        modules = hp["modules"]
    params = sum(p.numel() for p in modules["separator"].parameters())
    brain = Separation(
        modules=modules,
        opt_class=hp["optimizer"],
        hparams=hp,
        run_opts={"device": "cpu"},
        checkpointer=None,
    )
    brain.on_fit_start()
    loader = train_loader(brain, hp)
    valid = csv_pairs(spec["valid_csv"], hp["num_spks"])
    sched = getattr(brain.hparams, "lr_scheduler", None)
    per_step = getattr(sched, "per_step", False)
    budget = spec["budget_minutes"] * 60
    evals = sorted(m * 60 for m in spec["eval_minutes"] if m * 60 <= budget)
    result = dict(
        name=spec["name"],
        overrides=spec["overrides"],
        params=params,
        threads=spec["threads"],
        curve=[],
        lr=[],
    )

    def save():
        Path(spec["result"]).write_text(json.dumps(result, indent=1))

    def evaluate(cpu, point):
        brain.modules.eval()
        t0 = time.time()
        sisnri, _ = si_snri_of(brain.modules.separator, valid, hp["sample_rate"])
        brain.modules.train()
        result["curve"].append(
            dict(
                budget_point=point / 60,
                cpu_minutes=cpu / 60,
                wall_minutes=(time.time() - start) / 60,
                steps=brain.optimizer_step,
                valid_si_snri=sisnri,
                eval_seconds=time.time() - t0,
            )
        )
        print(
            f"[{spec['name']}] {cpu / 60:.1f} CPU-min, {brain.optimizer_step} steps: "
            f"valid SI-SNRi {sisnri:.2f} dB",
            flush=True,
        )
        save()

    spent, epoch, start = 0.0, 0, time.time()
    brain.modules.train()
    while spent < budget:
        epoch += 1
        brain.on_stage_start(sb.Stage.TRAIN, epoch)
        losses = []
        t0 = time.process_time()
        for batch in loader:
            losses.append(float(brain.fit_batch(batch)))
            brain.step += 1
            now = time.process_time()
            spent += now - t0
            if per_step and hasattr(sched, "total") and brain.step == SCHED_PROBE_STEPS:
                sched.total = max(int(SCHED_PROBE_STEPS * budget / spent), sched.warmup + 1)
                result["schedule_total_steps"] = sched.total
            if brain.step % 25 == 0:
                result["lr"].append([spent / 60, brain.optimizer.param_groups[0]["lr"]])
            while evals and spent >= evals[0]:
                evaluate(spent, evals.pop(0))
            if spent >= budget:
                break
            t0 = time.process_time()
        if sched is not None and not per_step and losses:
            _, new_lr = sched([brain.optimizer], epoch, sum(losses) / len(losses))
            sb.nnet.schedulers.update_learning_rate(brain.optimizer, new_lr)
    result["train_cpu_minutes"], result["steps"] = spent / 60, brain.optimizer_step
    result["wall_minutes"] = (time.time() - start) / 60
    result["skipped_steps"] = getattr(brain, "skipped_steps", 0)
    brain.modules.eval()
    if spec.get("test_csv"):
        test = csv_pairs(spec["test_csv"], hp["num_spks"])
        result["test_si_snri"], result["test_sdri"] = si_snri_of(
            brain.modules.separator, test, hp["sample_rate"]
        )
        print(f"[{spec['name']}] test SI-SNRi {result['test_si_snri']:.2f} dB", flush=True)
    if spec.get("eval_dir"):
        result["eval_dir_si_snri"], result["eval_dir_sdri"] = si_snri_of(
            brain.modules.separator, dir_pairs(spec["eval_dir"]), hp["sample_rate"]
        )
    torch.save(brain.modules.separator.state_dict(), out / "separator.ckpt")
    save()


# ---------------------------------------------------------------- parent
def cpu_ticks():
    """{pid: (name, utime + stime ticks)} of every process."""
    ticks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ticks[int(stat.parent.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def prepare_data(yaml_file, folder):
    """The recipe's fixed valid/test mixtures (its ``prepare_kwargs``), once."""
    from sb_mamba.dataio.librimini import prepare_librimini

    hp = load_hparams(yaml_file, "", folder)
    prepare_librimini(
        hp["data_folder"],
        folder,
        sample_rate=hp["sample_rate"],
        num_spks=hp["num_spks"],
        **hp["prepare_kwargs"],
    )
    return str(Path(folder) / "valid.csv"), str(Path(folder) / "test.csv")


def plot(results, png, budget):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written.")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs = [0] + [p["cpu_minutes"] for p in r["curve"]]
        ys = [None] + [p["valid_si_snri"] for p in r["curve"]]
        label = r["name"] + (f" (test {r['test_si_snri']:.2f} dB)" if "test_si_snri" in r else "")
        ax.plot(xs[1:], ys[1:], marker="o", label=label)
    ax.set_xlabel("CPU minutes (one thread)")
    ax.set_ylabel("valid SI-SNRi (dB), held-out speakers")
    ax.set_title(f"Quality per CPU budget ({budget:g} min)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def markdown_table(json_files):
    """One markdown row per run of ``json_files`` (outputs of this script)."""
    reports = [json.loads(Path(f).read_text()) for f in json_files]
    points = sorted({c["budget_point"] for r in reports for run in r["runs"] for c in run["curve"]})
    head = (
        "| run | overrides | params | steps | "
        + " | ".join(f"{m:g} min" for m in points)
        + " | test SI-SNRi | test SDRi | load avg |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        loads = [v for _, v in r["load_average"]] or [float("nan")]
        for run in r["runs"]:
            pts = {c["budget_point"]: c["valid_si_snri"] for c in run["curve"]}
            cells = [f"{pts[m]:.2f}" if m in pts else "" for m in points]
            test = [f"{run[k]:.2f}" if k in run else "" for k in ("test_si_snri", "test_sdri")]
            lines.append(
                f"| {run['name']} | `{run['overrides']}` | {run['params'] / 1e6:.2f}M | "
                f"{run['steps']} | "
                + " | ".join(cells + test)
                + f" | {min(loads):.1f}-{max(loads):.1f} |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run-hparams",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "YAML"),
        help="train run NAME from another recipe YAML "
        "(e.g. the General recipe's); it is still scored on --hparams' valid/test",
    )
    p.add_argument(
        "--run",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDES"),
        help='a run: a name and YAML overrides, e.g. "{model_dim: 32}"',
    )
    p.add_argument("--peer", action="store_true", help="add SpeechBrain's Conv-TasNet peer")
    p.add_argument("--peer-overrides", default=PEER_OVERRIDES)
    p.add_argument("--hparams", default=str(DEFAULT_YAML), help="recipe YAML")
    p.add_argument("--budget-minutes", type=float, default=40.0)
    p.add_argument("--eval-minutes", type=float, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--no-test", action="store_true", help="skip the test mixtures")
    p.add_argument("--eval-dir", help="also score a mix/ s1/ s2/ folder")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "quality_budget"),
        help="output path without extension (.json and .png are written)",
    )
    p.add_argument(
        "--table",
        nargs="+",
        metavar="JSON",
        help="print the runs of earlier outputs as one markdown table, and exit",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(Path(args.worker).read_text()))
    if args.table:
        return print(markdown_table(args.table))
    runs = [(n, o) for n, o in args.run] + ([(PEER, args.peer_overrides)] if args.peer else [])
    if not runs:
        p.error("nothing to run: give --run NAME OVERRIDES and/or --peer")
    if len({n for n, _ in runs}) != len(runs):
        p.error("run names must be distinct")
    if args.eval_dir:
        dir_pairs(args.eval_dir)  # fail now, not after the budget
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_quality_"))
    valid_csv, test_csv = prepare_data(args.hparams, work / "data")
    evals = sorted(set(args.eval_minutes) | {args.budget_minutes})
    procs, specs = [], []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    before = cpu_ticks()
    t_start = time.time()
    for name, overrides in runs:
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        yaml_file = dict(args.run_hparams).get(name, args.hparams)
        spec = dict(
            name=name,
            overrides=overrides,
            yaml=str(Path(yaml_file).resolve()),
            folder=str(folder),
            result=str(folder / "result.json"),
            threads=args.threads,
            budget_minutes=args.budget_minutes,
            eval_minutes=evals,
            valid_csv=valid_csv,
            test_csv=None if args.no_test else test_csv,
            eval_dir=args.eval_dir,
        )
        (folder / "spec.json").write_text(json.dumps(spec))
        log = open(folder / "log.txt", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(folder / "spec.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        specs.append(spec)
        print(f"started {name}: {overrides} (log: {folder / 'log.txt'})", flush=True)
    loads = []
    while any(pr.poll() is None for pr in procs):
        loads.append([round((time.time() - t_start) / 60, 2), os.getloadavg()[0]])
        time.sleep(30)
    ours = {os.getpid()} | {pr.pid for pr in procs}  # the workers spawn no children
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    others = {}
    for pid, (name, t) in after.items():
        if pid in ours:
            continue
        used = (t - before.get(pid, (name, 0))[1]) / hz
        if used > 5:
            others[f"{name} ({pid})"] = round(used, 1)
    wall = (time.time() - t_start) / 60
    results = []
    for spec, pr in zip(specs, procs):
        if pr.returncode != 0 or not Path(spec["result"]).is_file():
            print(f"run {spec['name']} failed (exit {pr.returncode}); see {spec['folder']}/log.txt")
            continue
        results.append(json.loads(Path(spec["result"]).read_text()))
    busy = {k: v for k, v in others.items() if v > 0.05 * wall * 60}
    report = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        host=platform.node(),
        cpus=os.cpu_count(),
        command=" ".join(sys.argv),
        budget_minutes=args.budget_minutes,
        wall_minutes=wall,
        load_average=loads,
        other_processes_cpu_seconds=others,
        quiet=not busy,
        runs=results,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"), args.budget_minutes)
    print(
        f"\n{'run':<24}{'params':>10}{'steps':>8}"
        + "".join(f"{m:>9g}m" for m in evals)
        + f"{'test':>9}"
    )
    for r in results:
        pts = {c["budget_point"]: c["valid_si_snri"] for c in r["curve"]}
        row = "".join(f"{pts.get(m, float('nan')):>10.2f}" for m in evals)
        print(
            f"{r['name']:<24}{r['params']:>10,}{r['steps']:>8}{row}"
            f"{r.get('test_si_snri', float('nan')):>9.2f}"
        )
    print("other processes (CPU s): " + (json.dumps(others) if others else "none"))
    if busy:
        print("WARNING: the machine was not quiet: " + ", ".join(busy))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
