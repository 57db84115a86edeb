#!/usr/bin/env bash
# The paper's FR training (iresnet50, CosFace, recipe=paper) on a generated dataset, DDP over every GPU
# of this machine, evaluated each epoch on the five insightface .bin benchmarks.
#   DATA=outputs/paper_sg2/generate/dataset BINS=/path/to/faces_emore OUT=outputs/train/paper bash pipelines/train_paper.sh
# Multi-node: run the same torchrun line on every node with --nnodes, --node_rank and --rdzv_endpoint.
set -euo pipefail
: "${DATA:?set DATA to the image folder (<identity>/<images>) to train on}"
: "${BINS:?set BINS to the folder of lfw.bin, agedb_30.bin, cfp_fp.bin, calfw.bin, cplfw.bin}"
OUT=${OUT:-outputs/train/paper}
GPUS=${GPUS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}

torchrun --standalone --nproc_per_node="$GPUS" -m exfacegan.train recipe=paper model=iresnet50 head=cosface \
  "data.root=$DATA" "eval.root=$BINS" "eval.targets=[lfw,agedb_30,cfp_fp,calfw,cplfw]" "out_dir=$OUT" "$@"
