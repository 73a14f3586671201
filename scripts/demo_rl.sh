#!/usr/bin/env bash
# One command for Spatial-RL's embedded default: set up, give a tiny FLUX a 4-minute supervised flow-matching start
# on procedural scenes, then GRPO with Top-k filtering against the strict judge for 10 minutes (CPU), and print the
# held-out strict accuracy (exactly the named objects, each once, relation right) at the start and the end of RL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
spatialrl fit --config configs/spatialrl/sft_tiny.yaml
spatialrl fit --config configs/spatialrl/tiny.yaml "$@"
python - <<'PY'
import csv, glob
rows = [r for f in sorted(glob.glob("runs/spatialrl/tiny/csv/version_*/metrics.csv")) for r in csv.DictReader(open(f))]
val = [r for r in rows if r.get("val/reward")]
for r in (val[0], val[-1]):
    print(f"step {int(r['step']):4d}: held-out strict accuracy {float(r['val/strict_correct']):.3f} "
          f"(images with extra objects {float(r['val/strict_extra']):.3f}, with missing objects "
          f"{float(r['val/strict_missing']):.3f}; lenient centroid score, a diagnostic: {float(r['val/strict_lenient']):.3f})")
PY
