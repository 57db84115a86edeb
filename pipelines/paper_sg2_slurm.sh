#!/usr/bin/env bash
# The paper-scale StyleGAN2 job on a SLURM cluster: one GPU per array task through Hydra's
# submitit launcher. All tasks share one pinned run directory; merge checks every class.
#   CHECKPOINT=... RUN=/scratch/$USER/paper_sg2 PARTITION=gpu SHARDS=32 bash pipelines/paper_sg2_slurm.sh
set -euo pipefail
: "${CHECKPOINT:?set CHECKPOINT to an ArcFace iresnet50 backbone .pth}"
: "${RUN:?set RUN to a run directory on a shared file system}"
SHARDS=${SHARDS:-32}
PARTITION=${PARTITION:-gpu}
COMMON=(experiment=paper_sg2 "run_dir=$RUN" "embedder.network.checkpoint=$CHECKPOINT")
SLURM=(hydra/launcher=submitit_slurm "hydra.launcher.partition=$PARTITION" hydra.launcher.gpus_per_node=1
       hydra.launcher.tasks_per_node=1 hydra.launcher.cpus_per_task=8 hydra.launcher.timeout_min=720
       "hydra.sweep.dir=$RUN/slurm")

# Sampling, labelling and fitting run once, on one GPU (the batched solver makes fitting take seconds).
python -m exfacegan.run -m "${SLURM[@]}" "${COMMON[@]}" "stages=[sample,label,fit]" boundary=batched
python -m exfacegan.run -m "${SLURM[@]}" "${COMMON[@]}" boundary=batched "stages=[generate]" \
  "generate.num_shards=$SHARDS" "generate.shard=range(0,$SHARDS)"
python -m exfacegan.run "${COMMON[@]}" boundary=batched "stages=[merge,analyze]"
