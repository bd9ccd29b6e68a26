#!/usr/bin/env bash
# Trains a shipped General model on CPU, one thread: VARIANT=general (default,
# pretrained/sepmamba-8k) or VARIANT=causal (pretrained/sepmamba-causal-8k, for
# streaming; KERNEL=8 or 16), see demo/recipe_args.sh.
#
#   bash demo/train_general.sh [OUTPUT_FOLDER]     (from recipes/General/separation)
#
# DATA (default ../../../../shared/data) is the shared data folder (speech-l2/,
# noise/, rir/). The run checkpoints every 10 minutes and at each epoch end, so
# it can be killed at any moment: the same command resumes it. A new
# OUTPUT_FOLDER of the general variant starts from the shipped general weights
# (or, before there are any, the LibriMini demo model's: same layout) and keeps
# their learning curve (history.csv); the causal variant starts from the shipped
# causal weights (kernel 8) or, before there are any, from scratch.
# PREP_FROM=RUN_FOLDER reuses another run's prepared data (rooms, fixed
# mixtures) instead of making them again. Export with demo/export_general.sh.
set -euo pipefail
OUT=${1:-results/general}
DATA=${DATA:-../../../../shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$0")/recipe_args.sh"  # VARIANT, MODEL_NAME, GENERAL_MODEL_ARGS, GENERAL_TRAIN_ARGS
if [ "$VARIANT" = general ]; then
    INIT=${INIT-../../../pretrained/sepmamba-8k}
    [ -n "$INIT" ] && [ ! -d "$INIT" ] && INIT=../../../pretrained/sepmamba-librimini-8k
else  # the shipped causal model once there is one (kernel 8), else from scratch
    if [ -z "${INIT+x}" ] && [ "${KERNEL:-8}" = 8 ] && [ -d "../../../pretrained/$MODEL_NAME" ]; then
        INIT=../../../pretrained/$MODEL_NAME
    fi
    INIT=${INIT-}
fi
INIT_ARG=()
if [ -n "$INIT" ]; then
    INIT_ARG=(--init_from="$INIT")
    if [ ! -d "$OUT/save" ] && [ ! -f "$OUT/history.csv" ] && [ -f "$INIT/learning_curve.csv" ]; then
        mkdir -p "$OUT" && cp "$INIT/learning_curve.csv" "$OUT/history.csv"
    fi
fi
if [ -n "${PREP_FROM:-}" ] && [ ! -d "$OUT/save" ]; then
    mkdir -p "$OUT/save"
    for d in links rooms mixtures cache; do ln -s "$(cd "$PREP_FROM/save/$d" && pwd)" "$OUT/save/$d"; done
    cp "$PREP_FROM"/save/*.csv "$PREP_FROM/save/general_prep.json" "$OUT/save/"
fi
exec python train.py hparams/sepmamba.yaml --data_folder="$DATA" \
    --output_folder="$OUT" "${INIT_ARG[@]}" "${GENERAL_MODEL_ARGS[@]}" "${GENERAL_TRAIN_ARGS[@]}" \
    --N_epochs="${N_EPOCHS:-200}" --ckpt_interval_minutes=10
