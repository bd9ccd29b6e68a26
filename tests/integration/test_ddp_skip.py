"""DDP cannot hang: when one rank's loss is unusable, every rank skips the step.

Two gloo processes train a small SepMamba through the ``Separation`` brain's
``fit_batch`` (DDP-wrapped by SpeechBrain). Rank 1's second batch holds a NaN,
so its loss is non-finite: without agreement rank 0 would wait forever in the
gradient all-reduce. Both ranks must finish, skip that one step, and keep
identical weights.

Authors
-------
 * sb_mamba developers
"""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(os.environ.get("SB_MAMBA_SKIP_DDP") == "1", reason="DDP disabled")
STEPS, NAN_STEP, NAN_RANK = 3, 1, 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from speechbrain.dataio.batch import PaddedBatch

    from sb_mamba.lobes.sepmamba import SepMamba
    from sb_mamba.metrics import pit_si_snr_loss
    from sb_mamba.training.brain import Separation

    torch.manual_seed(0)  # the same initial weights on both ranks
    model = SepMamba(num_spks=2, dim=8, num_blocks=1, d_state=4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    hparams = dict(
        num_spks=2,
        sample_rate=8000,
        loss=pit_si_snr_loss,
        threshold_byloss=True,
        threshold=-30,
        loss_upper_lim=999999,
        max_grad_norm=5.0,
    )
    brain = Separation(
        modules={"separator": model},
        opt_class=lambda params: torch.optim.Adam(params, lr=1e-3),
        hparams=hparams,
        run_opts={"device": "cpu", "distributed_backend": "gloo"},
    )
    brain.on_fit_start()
    assert isinstance(brain.modules.separator, torch.nn.parallel.DistributedDataParallel)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for step in range(STEPS):
        s1, s2 = torch.randn(2, 800, generator=gen), torch.randn(2, 800, generator=gen)
        mix = s1 + s2
        if rank == NAN_RANK and step == NAN_STEP:
            mix[0, 10] = float("nan")
        batch = PaddedBatch(
            [
                {"id": f"{rank}-{step}-{i}", "mix_sig": mix[i], "s1_sig": s1[i], "s2_sig": s2[i]}
                for i in range(2)
            ]
        )
        brain.fit_batch(batch)
        brain.step += 1
    torch.save(
        {
            "state": model.state_dict(),
            "start": start,
            "skipped": getattr(brain, "skipped_steps", 0),
            "optimizer_step": brain.optimizer_step,
        },
        os.path.join(out, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


def test_nan_batch_on_one_rank_does_not_hang(tmp_path):
    ctx = mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP training hung: a rank is stuck in a collective")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == 1  # the NaN step, on both ranks
    assert r0["optimizer_step"] == r1["optimizer_step"] == STEPS - 1
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k  # identical weights
        assert torch.isfinite(v).all(), k
    changed = [k for k, v in r0["state"].items() if not torch.equal(v, r0["start"][k])]
    assert changed, "no weight was updated"
