#!/usr/bin/env bash
# GAN to verification accuracy on a laptop CPU in a few minutes: the smoke dataset (random networks, no
# downloads; its numbers mean nothing), then the smoke training recipe with hold-out verification.
#   RUN=outputs/smoke bash pipelines/train_smoke.sh [more exfacegan.train overrides]
set -euo pipefail
RUN=${RUN:-outputs/smoke}

python -m exfacegan.run experiment=smoke logger=none "run_dir=$RUN"
python -m exfacegan.train recipe=smoke "data.root=$RUN/generate/dataset" "out_dir=$RUN/train" "$@"
