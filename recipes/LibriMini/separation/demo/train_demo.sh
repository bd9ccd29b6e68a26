#!/usr/bin/env bash
# Trains the shipped demo model (pretrained/sepmamba-librimini-8k) on CPU.
#
#   bash demo/train_demo.sh [OUTPUT_FOLDER]     (from recipes/LibriMini/separation)
#
# SepMamba with dim 64, one Mamba block per direction, stride 2 as the paper
# (2.83M parameters), dynamic mixing of the bundled LibriMini train speakers,
# batch 4 x 2 s, learning rate 5e-4 with warmup + cosine over 25 epochs of
# 200 steps. (Run 2 first trained 19 epochs on a 40000-step cosine, nearly
# constant at 5e-4, with its validation flat at 4.3-4.8 dB; shortening the
# cosine to 25 epochs anneals the rate from there: the step counter is
# checkpointed, the horizon is read from these arguments.) A finished run
# trains on with N_EPOCHS=... bash demo/train_demo.sh RUN_FOLDER: the cosine
# then stretches to the new horizon, a warm restart from a higher rate.
# (Stride 4 learns faster in short budgets, benchmarks/bench_quality_budget.py,
# but stalled near 2 dB in 40 minutes; the demo keeps the layout its shipped
# weights were trained with, so no hour of them is lost.)
# The run checkpoints every 10 minutes and at each epoch end, so it can be
# killed at any moment: running the same command again resumes it.
#
# A new OUTPUT_FOLDER (e.g. on a new machine) starts from the shipped demo
# weights (init_from), never from scratch, and keeps their learning curve
# (history.csv). INIT= bash demo/train_demo.sh ... starts from scratch instead
# (needed once when the recipe's layout changes: init_from refuses weights
# trained for another layout). Export with demo/export_demo.sh OUTPUT_FOLDER.
set -euo pipefail
OUT=${1:-results/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SHIPPED=../../../pretrained/sepmamba-librimini-8k
INIT=${INIT-$SHIPPED}
INIT_ARG=()
if [ -n "$INIT" ]; then
    INIT_ARG=(--init_from="$INIT")
    # first start: remember the learning curve of the weights we start from
    if [ ! -d "$OUT/save" ] && [ ! -f "$OUT/history.csv" ] && [ -f "$INIT/learning_curve.csv" ]; then
        mkdir -p "$OUT" && cp "$INIT/learning_curve.csv" "$OUT/history.csv"
    fi
fi
exec python train.py hparams/sepmamba.yaml \
    --output_folder="$OUT" "${INIT_ARG[@]}" \
    --model_dim=64 --model_blocks=1 --model_stride=2 \
    --segment_seconds=2.0 --batch_size=4 --epoch_size=800 \
    --lr=0.0005 --lr_schedule=warmup_cosine --warmup_steps=200 \
    --N_epochs="${N_EPOCHS:-25}" --ckpt_interval_minutes=10
