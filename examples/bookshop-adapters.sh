#!/usr/bin/env bash
# Train the two adapters of examples/bookshop.yaml on its training data and keep only their
# weights, as bare .safetensors files (what you get from many training tools):
#   examples/adapters/authors.safetensors, examples/adapters/shelves.safetensors
# Each is a QLoRA run of the `custom` preset (rank 16, alpha 32) on the embedded base.
set -euo pipefail
cd "$(dirname "$0")"
STEPS="${STEPS:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p adapters
for task in authors shelves; do
    adaptermerge train --task custom --data "data/$task-train.jsonl" --max-steps "$STEPS" --lr 2e-3 -o "$work/$task"
    cp "$work/$task/adapter_model.safetensors" "adapters/$task.safetensors"
done
echo "wrote examples/adapters/authors.safetensors and examples/adapters/shelves.safetensors"
