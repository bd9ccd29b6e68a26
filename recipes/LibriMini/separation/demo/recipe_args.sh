# The demo model's recipe: sourced by train_demo.sh and export_demo.sh, so that
# the evaluation rebuilds exactly the layout that was trained.
#
# SepMamba dim 32, one Mamba block per direction, stride 4, mask output
# (0.75M parameters): LibriMini's defaults, the recipe that learned fastest per
# CPU-minute in benchmarks/bench_quality_budget.py. Batch 4 x 2 s, lr 2e-3
# halved when the validation loss stalls, epochs of 1000 steps.
# (Runs 1 and 2, up to 2026-12-02, trained dim 64, stride 2, mapping output:
# --model_dim=64 --model_stride=2 --model_output=mapping, lr 5e-4 cosine.)
DEMO_MODEL_ARGS=(--model_dim=32 --model_blocks=1 --model_stride=4 --model_output=mask)
DEMO_TRAIN_ARGS=(--segment_seconds=2.0 --batch_size=4 --epoch_size=4000
                 --lr=0.002 --lr_schedule=plateau)
