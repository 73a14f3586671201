#!/usr/bin/env bash
# The paper in miniature, one command (CPU, about 33 minutes alone on 2 cores plus 10 for the rule-reward comparison; README): set up, then `spatialrl paper`
# runs and resumes every stage - the tiny FLUX's supervised start; procedural prompts perturbed by `spatialscore perturb`;
# `spatialscore make-pairs` with that FLUX (its own images, same seed per pair); `spatialscore filter-pairs` (the
# strict judge as the paper's human check, plus edited hard negatives); SpatialScore trained on the kept pairs, a
# hardening round; GRPO with SpatialScore as the only reward; the same GRPO with the strict rule reward for
# comparison; `spatialrl evaluate` of the start and the policies on held-out prompts by the strict judge. A rerun
# skips finished stages. Extra arguments go to `spatialrl paper` (e.g. --seed 1 --out runs/paper/seed1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
spatialrl paper --out runs/paper/seed0 --seed 0 --compare-rule "$@"
