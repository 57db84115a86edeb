#!/usr/bin/env bash
# The paper-scale StyleGAN2 job on one machine with several GPUs: sharded generation through
# Hydra's joblib launcher (job k takes GPU k mod #GPUs; with no GPU it runs on the CPU).
#   CHECKPOINT=/path/to/arcface_r50.pth RUN=outputs/paper_sg2 SHARDS=8 bash pipelines/paper_sg2_local.sh
set -euo pipefail
: "${CHECKPOINT:?set CHECKPOINT to an ArcFace iresnet50 backbone .pth}"
RUN=${RUN:-outputs/paper_sg2}
SHARDS=${SHARDS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
COMMON=(experiment=paper_sg2 "run_dir=$RUN" "embedder.network.checkpoint=$CHECKPOINT")

python -m exfacegan.run "${COMMON[@]}" "stages=[sample,label,fit]"
python -m exfacegan.run -m hydra/launcher=joblib "hydra.launcher.n_jobs=$SHARDS" "${COMMON[@]}" \
  "stages=[generate]" "generate.num_shards=$SHARDS" "generate.shard=range(0,$SHARDS)"
python -m exfacegan.run "${COMMON[@]}" "stages=[merge,analyze]"
