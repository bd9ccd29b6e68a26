#!/usr/bin/env bash
# Trains the shipped general model (pretrained/sepmamba-8k) on CPU, one thread.
#
#   bash demo/train_general.sh [OUTPUT_FOLDER]     (from recipes/General/separation)
#
# DATA (default ../../../../shared/data) is the shared data folder (speech-l2/,
# noise/, rir/). The run checkpoints every 10 minutes and at each epoch end, so
# it can be killed at any moment: the same command resumes it. A new
# OUTPUT_FOLDER starts from the shipped general weights (or, before there are
# any, the LibriMini demo model's: same layout), never from scratch, and keeps
# their learning curve (history.csv). Export with demo/export_general.sh.
set -euo pipefail
OUT=${1:-results/general}
DATA=${DATA:-../../../../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
INIT=${INIT-../../../pretrained/sepmamba-8k}
[ -n "$INIT" ] && [ ! -d "$INIT" ] && INIT=../../../pretrained/sepmamba-librimini-8k
INIT_ARG=()
if [ -n "$INIT" ]; then
    INIT_ARG=(--init_from="$INIT")
    if [ ! -d "$OUT/save" ] && [ ! -f "$OUT/history.csv" ] && [ -f "$INIT/learning_curve.csv" ]; then
        mkdir -p "$OUT" && cp "$INIT/learning_curve.csv" "$OUT/history.csv"
    fi
fi
source "$(dirname "$0")/recipe_args.sh"  # GENERAL_MODEL_ARGS, GENERAL_TRAIN_ARGS
exec python train.py hparams/sepmamba.yaml --data_folder="$DATA" \
    --output_folder="$OUT" "${INIT_ARG[@]}" "${GENERAL_MODEL_ARGS[@]}" "${GENERAL_TRAIN_ARGS[@]}" \
    --N_epochs="${N_EPOCHS:-200}" --ckpt_interval_minutes=10
