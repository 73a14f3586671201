#!/usr/bin/env bash
# One command: set up, then train the embedded default SpatialScore (tiny Qwen2.5-VL, procedural pairs, CPU)
# and report its held-out pairwise accuracy on test pairs it never trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
spatialscore fit --config configs/spatialscore/tiny.yaml "$@"
spatialscore test --config configs/spatialscore/tiny.yaml --ckpt_path runs/spatialscore-tiny/checkpoints/last.ckpt
