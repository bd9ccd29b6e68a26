#!/usr/bin/env bash
# Evaluates the demo run's best checkpoint on the LibriMini test mixtures and
# exports it to pretrained/sepmamba-librimini-8k (fp16 weights, model card,
# training log and a test mixture for the README quick start).
#
#   bash demo/export_demo.sh [RUN_FOLDER]       (from recipes/LibriMini/separation)
#
# RUN_FOLDER is the output folder of demo/train_demo.sh (default results/demo);
# the run may still be training: its best checkpoint so far is copied first.
set -euo pipefail
RUN=${1:-results/demo}
EVAL="$RUN/eval"
TARGET=../../../pretrained/sepmamba-librimini-8k
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

BEST=$(python -c "import sys; from sb_mamba.inference.export import find_best_checkpoint as f; print(f(sys.argv[1]).path)" "$RUN/save")
rm -rf "$EVAL" && mkdir -p "$EVAL/save"
cp -r "$BEST" "$EVAL/save/"
source "$(dirname "$0")/recipe_args.sh"  # the layout that was trained
python train.py hparams/sepmamba.yaml --output_folder="$EVAL" \
    "${DEMO_MODEL_ARGS[@]}" "${DEMO_TRAIN_ARGS[@]}" --test_only --n_audio_to_save=3
python -m sb_mamba.training.notes "$RUN" "$EVAL"  # notes.md, learning_curve.{csv,png}
sb-mamba export "$EVAL" "$TARGET" --fp16 --name sepmamba-librimini-8k \
    --license cc-by-4.0 --notes "$EVAL/notes.md" --hparams-file "$RUN/hyperparams.yaml"
cp "$RUN/train_log.txt" "$TARGET/train_log.txt"
cp "$EVAL/learning_curve.csv" "$EVAL/learning_curve.png" "$TARGET/"
FIRST=$(python -c "import csv, sys; print(next(csv.DictReader(open(sys.argv[1])))['mix_wav'])" "$EVAL/save/test.csv")
python -c "import sys, soundfile as sf; x, sr = sf.read(sys.argv[1]); sf.write(sys.argv[2], x, sr, subtype='PCM_16')" \
    "$FIRST" "$TARGET/test_mixture.wav"
echo "Exported $(basename "$BEST") to $TARGET"
