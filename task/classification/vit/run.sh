#!/usr/bin/env bash
# Launch a recipe on this node: bash task/classification/vit/run.sh CONFIG [NNODES MASTER_IP:PORT] [-o ...]
# Run the same command on every node of a multi-node job. DEVICES defaults to all 8 GPUs.
set -euo pipefail
config=$1; shift
launch=(--devices "${DEVICES:-0,1,2,3,4,5,6,7}")
if [[ $# -ge 2 && $1 =~ ^[0-9]+$ ]]; then
  launch+=(--nnodes "$1" --master "$2"); shift 2
fi
cd "$(dirname "$0")/../../.."
exec python -m paddle.distributed.launch "${launch[@]}" tools/train.py -c "$config" "$@"
