#!/usr/bin/env bash
# Trains the shipped demo model (pretrained/sepmamba-librimini-8k) on CPU.
#
#   bash demo/train_demo.sh [OUTPUT_FOLDER]     (from recipes/LibriMini/separation)
#
# The recipe (demo/recipe_args.sh): SepMamba dim 32, one Mamba block per
# direction, stride 4, mask output, dynamic mixing of the bundled LibriMini
# train speakers, batch 4 x 2 s, lr 2e-3 halved on validation plateaus, epochs
# of 1000 steps, N_EPOCHS (default 200) of them: more than a session, so the
# run simply goes on whenever it is started again.
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
source "$(dirname "$0")/recipe_args.sh"  # DEMO_MODEL_ARGS, DEMO_TRAIN_ARGS
exec python train.py hparams/sepmamba.yaml \
    --output_folder="$OUT" "${INIT_ARG[@]}" "${DEMO_MODEL_ARGS[@]}" "${DEMO_TRAIN_ARGS[@]}" \
    --N_epochs="${N_EPOCHS:-200}" --ckpt_interval_minutes=10
