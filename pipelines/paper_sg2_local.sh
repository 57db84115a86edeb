#!/usr/bin/env bash
# The paper-scale StyleGAN2 job on one machine with several GPUs: sharded generation through
# Hydra's joblib launcher (job k takes GPU k mod #GPUs; with no GPU it runs on the CPU).
#   RUN=outputs/paper_sg2 SHARDS=8 bash pipelines/paper_sg2_local.sh [Hydra overrides for every step]
# CHECKPOINT=/path/to/backbone.pth selects the paper's own backbone (embedder=iresnet50); without it the
# experiment's default embedder is used. `... paper_sg2_local.sh experiment=smoke logger=none` runs the same
# flow at smoke size.
set -euo pipefail
RUN=${RUN:-outputs/paper_sg2}
SHARDS=${SHARDS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
COMMON=(experiment=paper_sg2 "run_dir=$RUN")
if [[ -n "${CHECKPOINT:-}" ]]; then
  COMMON+=(embedder=iresnet50 "embedder.checkpoint=$CHECKPOINT")
fi
COMMON+=("$@")  # the caller's overrides come last, so they win

python -m exfacegan.run "${COMMON[@]}" "stages=[sample,label,fit]"
python -m exfacegan.run -m hydra/launcher=joblib "hydra.launcher.n_jobs=$SHARDS" "hydra.sweep.dir=$RUN/shards" \
  "${COMMON[@]}" "stages=[generate]" "generate.num_shards=$SHARDS" "generate.shard=range(0,$SHARDS)"
python -m exfacegan.run "${COMMON[@]}" "stages=[merge,analyze]"
