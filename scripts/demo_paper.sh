#!/usr/bin/env bash
# The paper in miniature, one command (CPU, about 30 minutes): set up, then `spatialrl paper` runs and resumes
# every stage - the tiny FLUX's supervised start; procedural prompts perturbed by `spatialscore perturb`;
# `spatialscore make-pairs` with that FLUX (its own images, same seed per pair); `spatialscore filter-pairs` (the
# strict judge as the paper's human check); SpatialScore trained on the kept pairs; GRPO with SpatialScore as the
# only reward; `spatialrl evaluate` of the start and the end on held-out prompts by the strict judge. A rerun skips
# finished stages. Extra arguments go to `spatialrl paper` (e.g. --seed 1 --out runs/paper/seed1, --compare-rule).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
spatialrl paper --out runs/paper/seed0 --seed 0 "$@"
