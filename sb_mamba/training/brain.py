"""The one separation Brain of sb_mamba, shared by every recipe.

:class:`Separation` trains any separator with the contract
``separator(mix [B, T]) -> est [B, T, num_spks]`` (SepMamba, SPMamba, S4M).
It follows SpeechBrain's WSJ0Mix recipe (speed perturbation of each source,
random shift, random crop, loss thresholding, gradient clipping, skipping of
non-finite losses, checkpoints keeping the best validation SI-SNR) and adds
what sb_mamba's recipes need: an SNR or SI-SNR uPIT loss from the YAML,
per-step schedulers (warmup + cosine), the validation SI-SNR improvement,
and ``test_results.csv`` with SI-SNR, SI-SNRi, SDR and SDRi.

Batches are SpeechBrain ``PaddedBatch`` objects with ``mix_sig``,
``s1_sig`` ... ``s{num_spks}_sig`` and optionally ``noise_sig``.

Authors
-------
 * sb_mamba developers
"""

import csv
import logging
import os
import time

import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from sb_mamba.audio import write_audio
from sb_mamba.errors import UserError
from sb_mamba.metrics import pit_metric, pit_si_snr_loss, sdr, si_snr
from sb_mamba.training.averaging import AVERAGE_KEY, is_started, weight_average

logger = get_logger(__name__)
CPU_META = "epoch_cpu_minutes"  # intra-epoch checkpoints: the epoch's CPU time so far

# The recipe-YAML keys this Brain reads (besides SpeechBrain's run options):
# recipe.load_hparams refuses a top-level key that nothing reads (a misspelt
# optional key); tests/recipes/test_yaml_consistency.py keeps this honest.
HPARAMS_READ = frozenset(
    {
        "dataloader_opts",
        "ema_decay",
        "epoch_counter",
        "limit_training_signal_len",
        "loss",
        "loss_upper_lim",
        "lr_scheduler",
        "max_shift",
        "min_shift",
        "n_audio_to_save",
        "num_spks",
        "output_folder",
        "sample_rate",
        "segment_curriculum",
        "speed_perturb",
        "threshold",
        "threshold_byloss",
        "train_logger",
        "training_signal_len",
        "use_rand_shift",
        "use_speedperturb",
    }
)


class Separation(sb.Brain):
    """Train and evaluate a ``separator`` module on mixtures.

    Expected hparams: ``num_spks``, ``sample_rate``, ``loss`` (e.g.
    :func:`sb_mamba.metrics.pit_si_snr_loss` or ``pit_snr_loss``),
    ``threshold_byloss``/``threshold``, ``loss_upper_lim``; optional:
    ``use_speedperturb`` + ``speed_perturb``, ``use_rand_shift`` +
    ``min_shift``/``max_shift``, ``limit_training_signal_len`` +
    ``training_signal_len``, ``segment_curriculum`` (``[[epoch, seconds],
    ...]``: from that epoch on, train on random crops of that many seconds,
    short to long; it takes precedence over ``training_signal_len``),
    ``lr_scheduler`` (SpeechBrain's
    ReduceLROnPlateau, called per epoch, or any scheduler with
    ``per_step = True``, called per optimizer step), ``epoch_counter``,
    ``train_logger``, ``checkpointer``, ``output_folder``,
    ``n_audio_to_save``, ``ema_decay`` (weight averaging, see
    :mod:`sb_mamba.training.averaging`: validation, test and checkpoint
    ranking use the averaged weights).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_average = None
        decay = getattr(self.hparams, "ema_decay", None)
        if decay is not None:
            self.weight_average = weight_average(self.modules.separator, decay)
            if self.checkpointer is not None:  # optional: older checkpoints lack it
                self.checkpointer.add_recoverable(
                    AVERAGE_KEY, self.weight_average, optional_load=True
                )

    # ------------------------------------------------------------- data
    def _signals(self, batch):
        """mix [B, T], targets [B, T, S], noise [B, T] or None, on device."""
        mix, _ = batch.mix_sig
        targets = torch.stack(
            [getattr(batch, f"s{i + 1}_sig")[0] for i in range(self.hparams.num_spks)],
            dim=-1,
        )
        noise = batch.noise_sig[0].to(self.device) if "noise_sig" in batch else None
        return mix.to(self.device), targets.to(self.device), noise

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Remember the training set so that dynamic mixing can follow epochs."""
        if stage == sb.Stage.TRAIN:
            self._train_dataset = dataset
        loader_kwargs.setdefault("collate_fn", sb.dataio.batch.PaddedBatch)
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    @torch.no_grad()
    def augment(self, mix, targets, noise=None):
        """Training-time augmentation, each part switched in the YAML.

        Speed perturbation of each source independently and a random shift
        of each source re-create the mixture as the sum of the sources
        (plus noise); use them only where ``mix == sum(targets) (+ noise)``.
        A random crop to the epoch's ``segment_curriculum`` length, else to
        ``training_signal_len``, is applied last.
        """
        hp = self.hparams
        remix = False
        if getattr(hp, "use_speedperturb", False):
            srcs = [hp.speed_perturb(targets[..., i]) for i in range(targets.shape[-1])]
            n = min(s.shape[-1] for s in srcs)
            targets = torch.stack([s[:, :n] for s in srcs], dim=-1)
            remix = True
        if getattr(hp, "use_rand_shift", False):
            shifts = torch.randint(hp.min_shift, hp.max_shift + 1, (targets.shape[-1],))
            targets = torch.stack(
                [torch.roll(targets[..., i], int(s), dims=1) for i, s in enumerate(shifts)],
                dim=-1,
            )
            remix = True
        if remix:
            mix = targets.sum(-1)
            if noise is not None:
                T = mix.shape[1]
                noise = torch.nn.functional.pad(noise, (0, max(0, T - noise.shape[1])))
                mix = mix + noise[:, :T]
        length = getattr(self, "_crop", None)  # set per epoch by segment_curriculum
        if length is None and getattr(hp, "limit_training_signal_len", False):
            length = int(hp.training_signal_len)
        if length is not None:
            if mix.shape[1] > length:
                start = int(torch.randint(0, mix.shape[1] - length + 1, (1,)))
                mix = mix[:, start : start + length]
                targets = targets[:, start : start + length]
        return mix, targets

    # ------------------------------------------------------------ model
    def compute_forward(self, mix, targets, stage, noise=None, averaged=True):
        """Separate ``mix``; returns (estimates [B, T, S], targets [B, T, S]).

        Outside training, the averaged weights separate once there are any
        (``ema_decay``), unless ``averaged=False``.
        """
        separator = self.modules.separator
        if stage == sb.Stage.TRAIN:
            mix, targets = self.augment(mix, targets, noise)
        elif averaged and is_started(self.weight_average):
            separator = self.weight_average.module
        est = separator(mix)  # [B, T, S]
        T = targets.shape[1]
        if est.shape[1] != T:  # separators keep T; guard third-party ones
            est = torch.nn.functional.pad(est, (0, 0, 0, max(0, T - est.shape[1])))[:, :T]
        return est, targets

    def compute_objectives(self, predictions, targets, stage=sb.Stage.TRAIN):
        """Per-example loss [B]: the YAML's loss in training, -SI-SNR else."""
        if stage == sb.Stage.TRAIN:
            return self.hparams.loss(targets, predictions.float())
        return pit_si_snr_loss(targets, predictions.float())

    # --------------------------------------------------------- training
    def fit_batch(self, batch):
        """One step with loss thresholding and skipping of unusable losses."""
        hp = self.hparams
        mix, targets, noise = self._signals(batch)
        should_step = self.step % self.grad_accumulation_factor == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                est, targets = self.compute_forward(mix, targets, sb.Stage.TRAIN, noise)
                loss = self.compute_objectives(est, targets, sb.Stage.TRAIN)  # [B]
            # before thresholding: NaN > threshold is False, so the filter would
            # drop a NaN example as "solved" while its NaN still reaches the gradients
            finite = bool(torch.isfinite(loss).all())
            if getattr(hp, "threshold_byloss", False):
                loss = loss[loss > hp.threshold]  # drop examples already solved
            local_ok = finite and loss.numel() > 0 and loss.mean().item() < hp.loss_upper_lim
            # DDP: a rank that skips backward() while the others run it would
            # hang them in the gradient all-reduce, so all ranks skip together
            if self._all_ranks_agree(local_ok):
                loss = loss.mean()
                self.scaler.scale(loss / self.grad_accumulation_factor).backward()
                if should_step:
                    self.optimizers_step()
                    self._update_average()
            else:
                self.skipped_steps = getattr(self, "skipped_steps", 0) + 1
                if not local_ok and (not finite or loss.numel() > 0):
                    logger.warning(
                        "Skipped a batch with an unusable loss (%s: non-finite or "
                        "above loss_upper_lim=%s); %d skipped so far.",
                        loss.detach().cpu().tolist(),
                        hp.loss_upper_lim,
                        self.skipped_steps,
                    )
                elif local_ok:
                    logger.info(
                        "Skipped a step with the other DDP ranks (one had an "
                        "unusable loss); %d skipped so far.",
                        self.skipped_steps,
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=self.device)
        self.on_fit_batch_end(batch, est, loss, should_step)
        return loss.detach().cpu()

    def _update_average(self):
        """Move the weight average (``ema_decay``) towards the new weights."""
        if self.weight_average is not None:
            sep = self.modules.separator
            if isinstance(sep, torch.nn.parallel.DistributedDataParallel):
                sep = sep.module
            self.weight_average.update_parameters(sep)

    def _all_ranks_agree(self, usable):
        """True only if every DDP rank can use its loss (an all-reduce of the flag)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return usable
        flag = torch.tensor([1.0 if usable else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def on_fit_batch_start(self, batch, should_step):
        """Set the LR of a per-step scheduler (e.g. warmup + cosine)."""
        sched = getattr(self.hparams, "lr_scheduler", None)
        if should_step and getattr(sched, "per_step", False):
            sched(self.optimizer)

    def _save_intra_epoch_ckpt(self):
        """SpeechBrain's intra-epoch checkpoint, also holding the epoch's CPU
        minutes so far (in its meta), so a killed run's learning curve keeps them."""
        spent = (time.process_time() - getattr(self, "_cpu_start", time.process_time())) / 60
        self.checkpointer.save_and_keep_only(
            end_of_epoch=False,
            num_to_keep=1,
            ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta,
            meta={INTRA_EPOCH_CKPT_FLAG: True, CPU_META: spent},
            verbosity=logging.DEBUG,
        )

    def on_fit_start(self):
        """Log where training starts and the effective batch size."""
        super().on_fit_start()
        if self.checkpointer is not None and self.step:  # resumed inside an epoch
            ckpt = self.checkpointer.find_checkpoint()
            self._cpu_carried = 60 * float((ckpt.meta if ckpt else {}).get(CPU_META, 0.0))
        from sb_mamba.training.cpu_load import warn_if_cores_busy

        counter = getattr(self.hparams, "epoch_counter", None)
        logger.info(
            "Training starts after epoch %s, at step %d of that epoch (optimizer step %d)%s.",
            getattr(counter, "current", 0),
            self.step,
            self.optimizer_step,
            " - resumed from a checkpoint" if self.optimizer_step else "",
        )
        if self.optimizer_step and self.weight_average is not None:
            if is_started(self.weight_average):
                logger.info("Weight average (ema_decay) resumed from the checkpoint.")
            else:
                logger.info(
                    "The checkpoint holds no weight average (written before ema_decay was "
                    "set): the average starts from the current weights."
                )
        if str(self.device).startswith("cpu"):
            warn_if_cores_busy()  # 2 threads beside a busy process: many times slower
        world = int(os.environ.get("WORLD_SIZE", "1"))
        opts = getattr(self.hparams, "dataloader_opts", {}) or {}
        per_proc = opts.get("batch_size", 1)
        logger.info(
            "Effective batch size: %d (batch_size %d x %d process(es) x "
            "grad_accumulation_factor %d).",
            per_proc * world * self.grad_accumulation_factor,
            per_proc,
            world,
            self.grad_accumulation_factor,
        )

    # ------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        """-SI-SNR of the batch; also accumulates the SI-SNR improvement.

        In the TEST stage the same separation also gives the rows of
        ``test_results.csv`` and the first ``n_audio_to_save`` examples as
        audio (the test set is separated once).
        """
        mix, targets, _ = self._signals(batch)
        with self.evaluation_ctx:
            est, targets = self.compute_forward(mix, targets, stage)
        loss = self.compute_objectives(est, targets, stage)  # [B]
        base = pit_si_snr_loss(targets, mix.unsqueeze(-1).expand_as(targets))
        self._sisnri.append((base - loss).detach().cpu())
        if stage == sb.Stage.VALID and is_started(self.weight_average):
            with self.evaluation_ctx:  # the weights as trained, for the log
                raw, _ = self.compute_forward(mix, targets, stage, averaged=False)
            raw_loss = self.compute_objectives(raw, targets, stage)
            self._sisnri_raw.append((base - raw_loss).detach().cpu())
        if stage == sb.Stage.TEST:
            self._add_test_rows(batch.id, mix, targets, est.float())
        return loss.mean().detach().cpu()

    def on_stage_start(self, stage, epoch=None):
        """Reset the SI-SNRi accumulator; tell dynamic mixing the epoch."""
        self._sisnri, self._sisnri_raw, self._rows = [], [], []
        # an epoch resumed from an intra-epoch checkpoint keeps the CPU time
        # spent in it before the kill (see _save_intra_epoch_ckpt)
        carried = getattr(self, "_cpu_carried", 0.0) if stage == sb.Stage.TRAIN else 0.0
        self._cpu_carried = 0.0
        self._cpu_start = time.process_time() - carried
        ds = getattr(self, "_train_dataset", None)
        if stage == sb.Stage.TRAIN and epoch is not None and hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        if stage == sb.Stage.TRAIN:
            crop = self.curriculum_length(epoch)
            if crop != getattr(self, "_crop", None) and crop is not None:
                logger.info(
                    "Epoch %s: training on %.2f s crops (segment_curriculum).",
                    epoch,
                    crop / self.hparams.sample_rate,
                )
            self._crop = crop

    def curriculum_length(self, epoch):
        """Training crop (samples) that ``segment_curriculum`` sets for ``epoch``, or None.

        ``segment_curriculum`` is a list of ``[first_epoch, seconds]``; before
        the first stage, and without a curriculum, mixtures are not cropped
        (beyond ``training_signal_len``).
        """
        stages = getattr(self.hparams, "segment_curriculum", None)
        if not stages or epoch is None:
            return None
        try:
            stages = sorted((int(e), float(s)) for e, s in stages)
        except (TypeError, ValueError):
            stages = []
        if not stages or min(e for e, _ in stages) < 1 or min(s for _, s in stages) <= 0:
            raise UserError(
                f"segment_curriculum must be a list of [first_epoch >= 1, seconds > 0] "
                f"pairs, e.g. [[1, 0.5], [3, 1.0], [6, 2.0]]; got "
                f"{self.hparams.segment_curriculum!r}."
            )
        seconds = [s for e, s in stages if epoch >= e]
        return int(seconds[-1] * self.hparams.sample_rate) if seconds else None

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, schedule the LR, and keep the best checkpoint by SI-SNR."""
        stats = {"loss": stage_loss, "si-snr": -stage_loss}
        if stage == sb.Stage.TRAIN:
            # CPU time of this process in the epoch (all threads; a resumed
            # epoch includes what it spent before the kill, as of its last
            # intra-epoch checkpoint): the budget in the learning curve
            stats["cpu-minutes"] = (time.process_time() - self._cpu_start) / 60
            self.train_stats = stats
            return
        if self._sisnri:
            stats["si-snri"] = torch.cat(self._sisnri).mean().item()
        if self._sisnri_raw:  # with ema_decay: si-snri is the average's
            stats["si-snri-raw"] = torch.cat(self._sisnri_raw).mean().item()
        if stage == sb.Stage.VALID:
            sched = getattr(self.hparams, "lr_scheduler", None)
            lr = self.optimizer.param_groups[0]["lr"]
            if sched is not None and not getattr(sched, "per_step", False):
                lr, new_lr = sched([self.optimizer], epoch, stage_loss)
                sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            if hasattr(self.hparams, "train_logger"):
                self.hparams.train_logger.log_stats(
                    stats_meta={"epoch": epoch, "lr": lr},
                    train_stats=getattr(self, "train_stats", None),
                    valid_stats=stats,
                )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"si-snr": -stage_loss}, max_keys=["si-snr"]
                )
        elif stage == sb.Stage.TEST:
            if hasattr(self.hparams, "train_logger"):
                self.hparams.train_logger.log_stats(
                    stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                    test_stats=stats,
                )
            self.test_results = self._write_test_results()

    def _add_test_rows(self, ids, mix, targets, est):
        """Rows of ``test_results.csv`` for a test batch (batch size 1: no padding)."""
        n_audio = getattr(self.hparams, "n_audio_to_save", 5)
        for i, snt_id in enumerate(ids):
            m, t, e = mix[i : i + 1], targets[i : i + 1], est[i : i + 1]  # [1, T], [1, T, S]
            value, perm = pit_metric(t, e, si_snr)
            mix_rep = m.unsqueeze(-1).expand_as(t)
            base = pit_metric(t, mix_rep, si_snr)[0]
            sdr_est, sdr_mix = sdr(t[0], e[0]).mean().item(), sdr(t[0], mix_rep[0]).mean().item()
            self._rows.append(
                {
                    "snt_id": snt_id,
                    "sdr": sdr_est,
                    "sdr_i": sdr_est - sdr_mix,
                    "si-snr": value.item(),
                    "si-snr_i": (value - base).item(),
                }
            )
            if len(self._rows) <= n_audio and if_main_process():
                self._save_audio(snt_id, m[0], t[0], e[0, :, perm[0]])

    def _write_test_results(self):
        """Write ``<output_folder>/test_results.csv`` (SI-SNR, SI-SNRi, SDR, SDRi per
        mixture and their average) from the test stage's rows; return the averages."""
        rows = self._rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, rows)  # each rank's share of the set
            seen, rows = set(), []
            for r in (r for part in parts for r in part):
                if r["snt_id"] not in seen:  # a padded sampler repeats some mixtures
                    seen.add(r["snt_id"])
                    rows.append(r)
        fields = ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
        avg = {k: sum(r[k] for r in rows) / max(len(rows), 1) for k in fields[1:]}
        csv_path = os.path.join(self.hparams.output_folder, "test_results.csv")
        if if_main_process():
            with open(csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
                writer.writerow({"snt_id": "avg", **avg})
        logger.info(
            "Test: SI-SNR %.2f dB, SI-SNRi %.2f dB, SDR %.2f dB, SDRi %.2f dB "
            "over %d mixtures -> %s",
            avg["si-snr"],
            avg["si-snr_i"],
            avg["sdr"],
            avg["sdr_i"],
            len(rows),
            csv_path,
        )
        return avg

    def _save_audio(self, snt_id, mix, targets, est):
        """Write mixture, references and peak-normalised estimates as wav."""
        folder = os.path.join(self.hparams.output_folder, "audio_results")
        sr = self.hparams.sample_rate
        write_audio(os.path.join(folder, f"{snt_id}_mix.wav"), mix, sr)
        for s in range(est.shape[-1]):
            hat = est[:, s] / est[:, s].abs().max().clamp_min(1e-8) * 0.9
            write_audio(os.path.join(folder, f"{snt_id}_s{s + 1}hat.wav"), hat, sr)
            write_audio(os.path.join(folder, f"{snt_id}_s{s + 1}.wav"), targets[:, s], sr)
