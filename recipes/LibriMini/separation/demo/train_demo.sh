#!/usr/bin/env bash
# Trains the shipped demo model (pretrained/sepmamba-librimini-8k) on CPU.
#
#   bash demo/train_demo.sh [OUTPUT_FOLDER]     (from recipes/LibriMini/separation)
#
# SepMamba with dim 64 and one Mamba block per direction (2.83M parameters),
# dynamic mixing of the 150 bundled LibriMini train speakers, 1 s segments,
# batch 4. The run checkpoints every 10 minutes and at each epoch end, so it
# can be killed at any moment: running the same command again resumes it.
# Export the best checkpoint afterwards with
#
#   sb-mamba-export OUTPUT_FOLDER ../../../pretrained/sepmamba-librimini-8k --fp16
set -euo pipefail
OUT=${1:-results/demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python train.py hparams/sepmamba.yaml \
    --output_folder="$OUT" \
    --model_dim=64 --model_blocks=1 \
    --segment_seconds=1.0 --batch_size=4 --epoch_size=800 \
    --N_epochs=500 --ckpt_interval_minutes=10
