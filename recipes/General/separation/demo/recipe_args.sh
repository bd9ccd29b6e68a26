# The recipes of the shipped General models, sourced by train_general.sh and
# export_general.sh, so that the evaluation rebuilds exactly the layout that
# was trained. VARIANT picks the model:
#
#   general (pretrained/sepmamba-8k): SepMamba dim 32, stride 4, mask output,
#     two Mamba blocks per direction (1.2M parameters): runs 1 and 2 trained the
#     LibriMini demo model's layout (one block, 0.75M), warm-started from its
#     weights; run 3 grew it to two blocks (BLOCKS).
#   causal (pretrained/sepmamba-causal-8k): the same U-Net with forward-only
#     Mamba layers (two blocks per layer, 0.58M parameters) and kernel KERNEL
#     (default 8: a look-ahead of 147 samples = 18.4 ms; 16: 39.4 ms), for
#     sb-mamba stream; trained from scratch (the bidirectional weights do not fit).
#
# BLOCKS (general; default 2) sets the Mamba blocks per direction and layer: a
# run with more blocks than the weights it starts from grows them in depth (the
# new blocks start as identities); its export needs the same BLOCKS.
#
# Both: batch 4 x 2 s, lr 2e-3 halved when the validation loss stalls, epochs
# of 1000 steps. LR overrides the starting lr (a run warm-started after the
# plateau schedule had halved it: LR=0.0005). SCHEDULE=warmup_cosine instead
# decays it (after 50 steps of warmup) to 1 % over the run's N_EPOCHS, for a
# last run from the best weights. The data: hparams/sepmamba.yaml's
# defaults, except that the general variant's training mixtures (from its run 2
# on) are noisier than its valid/test ones: noise in 70 % of them at -6 to 6 dB
# SNR (valid/test: 50 %, -6 to 10 dB), since noise is its weakest condition.
VARIANT=${VARIANT:-general}
case "$VARIANT" in
    general)
        MODEL_NAME=sepmamba-8k
        GENERAL_MODEL_ARGS=(--model_dim=32 --model_blocks="${BLOCKS:-2}" --model_stride=4 --model_output=mask)
        GENERAL_DATA_ARGS=(--train_noise_prob=0.7 "--train_snr_db_range=[-6.0, 6.0]") ;;
    causal)
        MODEL_NAME=sepmamba-causal-8k
        GENERAL_MODEL_ARGS=(--model_dim=32 --model_blocks=1 --model_stride=4 --model_output=mask
                            --model_causal=True --model_kernel_size="${KERNEL:-8}")
        GENERAL_DATA_ARGS=() ;;
    *) echo "VARIANT must be general or causal, not '$VARIANT'." >&2; exit 2 ;;
esac
GENERAL_TRAIN_ARGS=(--segment_seconds=2.0 --batch_size=4 --epoch_size=4000
                    --lr="${LR:-0.002}" --lr_schedule="${SCHEDULE:-plateau}" "${GENERAL_DATA_ARGS[@]}")
