# The shipped general model's recipe (pretrained/sepmamba-8k): sourced by
# train_general.sh and export_general.sh, so that the evaluation rebuilds
# exactly the layout that was trained.
#
# SepMamba dim 32, one Mamba block per direction, stride 4, mask output
# (0.75M parameters, the layout of the LibriMini demo model, whose weights it
# starts from), batch 4 x 2 s, lr 2e-3 halved when the validation loss stalls,
# epochs of 1000 steps. The data: hparams/sepmamba.yaml's defaults.
GENERAL_MODEL_ARGS=(--model_dim=32 --model_blocks=1 --model_stride=4 --model_output=mask)
GENERAL_TRAIN_ARGS=(--segment_seconds=2.0 --batch_size=4 --epoch_size=4000
                    --lr=0.002 --lr_schedule=plateau)
