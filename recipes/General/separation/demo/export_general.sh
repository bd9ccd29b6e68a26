#!/usr/bin/env bash
# Evaluates a General run's best checkpoint and exports it to
# pretrained/sepmamba-8k (VARIANT=general, the default) or
# pretrained/sepmamba-causal-8k (VARIANT=causal, with the run's KERNEL): fp16
# weights, model card with the robustness table (benchmarks/bench_robustness.py,
# beside the model it is compared with), learning curve, training log and a
# test mixture for the README.
#
#   bash demo/export_general.sh [RUN_FOLDER]     (from recipes/General/separation)
#
# RUN_FOLDER is the output folder of demo/train_general.sh (default
# results/general); the run may still be training: its best checkpoint so far
# is copied first, and its prepared data are reused (linked, not remade).
set -euo pipefail
RUN=${1:-results/general}
DATA=${DATA:-../../../../shared/data}
EVAL="$RUN/eval"
ROOT=../../..
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source "$(dirname "$0")/recipe_args.sh"  # the layout that was trained
TARGET=${TARGET:-$ROOT/pretrained/$MODEL_NAME}
SPEAKERS="dynamic mixing of 251 speakers (LibriMini's 156 LibriSpeech readers and 95 speechocean762 children and non-native adults) at 8 kHz, half of the mixtures in a room (measured RIRs and simulated rooms)"
AVERAGE="the weights are a moving average over the training steps (ema_decay 0.999) once the run used it (train_log.txt: valid si-snri is the average's, valid si-snri-raw the last weights')"
MIXING="$SPEAKERS, half with real noise at -6 to 10 dB SNR, relative levels up to 10 dB, 10 % single talkers"
if [ "$VARIANT" = general ]; then
    CARD=card.md DATA_NOTE="$SPEAKERS, real noise in 70 % of them at -6 to 6 dB SNR (run 1: half, at -6 to 10 dB), relative levels up to 10 dB, 10 % single talkers; warm-started from the LibriMini demo model (its curve comes first); run 3 grew the model from one to two Mamba blocks per direction (the new blocks started as identities); $AVERAGE"
    PEER="sepmamba-librimini-8k=$ROOT/pretrained/sepmamba-librimini-8k"
    TARGET_DB=8  # the general model's target (clean held-out speakers)
else
    CARD=card_causal.md DATA_NOTE="$MIXING; trained from scratch; $AVERAGE"
    PEER="sepmamba-8k=$ROOT/pretrained/sepmamba-8k"
    TARGET_DB=6  # the causal model's target (clean held-out speakers)
fi

BEST=$(python -c "import sys; from sb_mamba.inference.export import find_best_checkpoint as f; print(f(sys.argv[1]).path)" "$RUN/save")
rm -rf "$EVAL" && mkdir -p "$EVAL/save"
cp -r "$BEST" "$EVAL/save/"
for d in links rooms mixtures cache; do ln -s "$(cd "$RUN/save/$d" && pwd)" "$EVAL/save/$d"; done
cp "$RUN"/save/*.csv "$RUN/save/general_prep.json" "$EVAL/save/"
python train.py hparams/sepmamba.yaml --data_folder="$DATA" --output_folder="$EVAL" \
    "${GENERAL_MODEL_ARGS[@]}" "${GENERAL_TRAIN_ARGS[@]}" --test_only --n_audio_to_save=3
python -m sb_mamba.training.notes "$RUN" "$EVAL" --name "$MODEL_NAME" \
    --recipe-dir recipes/General/separation --train-script demo/train_general.sh \
    --export-script demo/export_general.sh --run-label "general $(basename "$RUN")" --own-curve general \
    --target-db "$TARGET_DB" --data "$DATA_NOTE" \
    --eval "Validation: 60 fixed 4 s mixtures of 30 held-out speakers in the training conditions (the LibriMini part of the curve: 50 clean mixtures of LibriMini readers); test: 100 mixtures of 40 other held-out speakers, held-out noise recordings and rooms."
# a first export, scored on the robustness test sets beside the model it is compared with
sb-mamba export "$EVAL" "$EVAL/model" --fp16 --name "$MODEL_NAME" --hparams-file "$RUN/hyperparams.yaml"
python "$ROOT/benchmarks/bench_robustness.py" --data "$DATA" \
    --model "$MODEL_NAME=$EVAL/model" --model "$PEER" --out "$EVAL/robustness"
{ cat "$(dirname "$0")/$CARD"; echo; tail -n +2 "$EVAL/robustness.md"; echo; \
  echo "![robustness](robustness.png)"; echo; cat "$EVAL/notes.md"; } > "$EVAL/card.md"
sb-mamba export "$EVAL" "$TARGET" --fp16 --name "$MODEL_NAME" --license cc-by-sa-4.0 \
    --notes "$EVAL/card.md" --hparams-file "$RUN/hyperparams.yaml"
cp "$RUN/train_log.txt" "$EVAL/learning_curve.csv" "$EVAL/learning_curve.png" "$TARGET/"
cp "$EVAL/robustness.json" "$EVAL/robustness.png" "$TARGET/"
FIRST=$(python -c "import csv, sys; print(next(csv.DictReader(open(sys.argv[1])))['mix_wav'])" "$EVAL/save/test.csv")
python -c "import sys, soundfile as sf; x, sr = sf.read(sys.argv[1]); sf.write(sys.argv[2], x, sr, subtype='PCM_16')" \
    "$FIRST" "$TARGET/test_mixture.wav"
echo "Exported $(basename "$BEST") to $TARGET"
