#!/usr/bin/env bash
# The paper-scale StyleGAN2 job on a SLURM cluster: one GPU per array task through Hydra's
# submitit launcher. All tasks share one pinned run directory; merge checks every class.
#   RUN=/scratch/$USER/paper_sg2 PARTITION=gpu SHARDS=32 bash pipelines/paper_sg2_slurm.sh [Hydra overrides for every step]
# CHECKPOINT=/path/to/backbone.pth selects the paper's own backbone (embedder=iresnet50); without it the
# experiment's default embedder is used. LAUNCHER=submitit_local runs the same code path on this machine,
# without a scheduler (e.g. `... paper_sg2_slurm.sh experiment=smoke logger=none` to try the flow); it gives
# every task GPU 0, so a multi-GPU workstation is better served by paper_sg2_local.sh.
set -euo pipefail
: "${RUN:?set RUN to a run directory on a shared file system}"
SHARDS=${SHARDS:-32}
LAUNCHER=${LAUNCHER:-submitit_slurm}
case "$LAUNCHER" in
  submitit_slurm) LAUNCH=(hydra/launcher=submitit_slurm "hydra.launcher.partition=${PARTITION:-gpu}") ;;
  submitit_local) LAUNCH=(hydra/launcher=submitit_local) ;;
  *) echo "paper_sg2_slurm.sh: error: LAUNCHER=$LAUNCHER; use submitit_slurm or submitit_local" >&2; exit 2 ;;
esac
LAUNCH+=(hydra.launcher.gpus_per_node=1 hydra.launcher.tasks_per_node=1 hydra.launcher.cpus_per_task=8
         hydra.launcher.timeout_min=720)
# The batched solver gives the paper's LinearSVC boundaries in seconds on a GPU.
COMMON=(experiment=paper_sg2 boundary=batched "run_dir=$RUN")
if [[ -n "${CHECKPOINT:-}" ]]; then
  COMMON+=(embedder=iresnet50 "embedder.checkpoint=$CHECKPOINT")
fi
COMMON+=("$@")  # the caller's overrides come last, so they win

# Sampling, labelling and fitting run once, as one task; then one task per shard; then merge and analyze.
python -m exfacegan.run -m "${LAUNCH[@]}" "hydra.sweep.dir=$RUN/slurm/prepare" "${COMMON[@]}" "stages=[sample,label,fit]"
python -m exfacegan.run -m "${LAUNCH[@]}" "hydra.sweep.dir=$RUN/slurm/generate" "${COMMON[@]}" "stages=[generate]" \
  "generate.num_shards=$SHARDS" "generate.shard=range(0,$SHARDS)"
python -m exfacegan.run -m "${LAUNCH[@]}" "hydra.sweep.dir=$RUN/slurm/analyze" "${COMMON[@]}" "stages=[merge,analyze]"
