#!/usr/bin/env bash
# docs/CALIBRATION.md and results/calibration/: how often `calibrate --max-drop D` breaks its promise
# on 200 resampled calibration/test splits of each checkpoint's held-out slice plus dev, D = 1 and 2.
# Checkpoints: CKPT/<task> (default runs/ckpt), trained as `metabert train --task <task> --model minilm-l6`.
# Run from the repository root with GLUE_DIR set; all-exit logits are cached under runs/calibration/.
set -euo pipefail
CKPT=${CKPT:-runs/ckpt}
TASKS=${TASKS:-"sst2 mrpc rte"}
M="python -m metabert"
for task in $TASKS; do
  $M validate-calibration --checkpoint "$CKPT/$task" --max-drop 1,2 --splits 200 --no-progress \
     --logits-cache "runs/calibration/$task.logits.pt" --output "results/calibration/$task.json"
done
$M validate-calibration --summarise $(for t in $TASKS; do echo "results/calibration/$t.json"; done) \
   --markdown docs/CALIBRATION.md --plot docs/calibration.png
