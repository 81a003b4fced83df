#!/usr/bin/env bash
# Spark GPU discovery script: prints {"name": "gpu", "addresses": ["0", "1", ...]} for this node.
# Use with spark.worker.resource.gpu.discoveryScript / spark.executor.resource.gpu.discoveryScript
# (`spark-infer-gpu-discovery` prints this file's path).
#
# - CUDA_VISIBLE_DEVICES set: the addresses are its entries as listed there (indices or GPU-/MIG-
#   UUIDs), read the way CUDA reads them: up to the first invalid entry; set but empty, "-1" or
#   "NoDevFiles" means no GPU. spark-infer maps such an address to its position in
#   CUDA_VISIBLE_DEVICES (address "3" with CUDA_VISIBLE_DEVICES=2,3 is cuda:1).
# - otherwise: the indices `nvidia-smi` lists; no nvidia-smi, or one that fails (no driver): none.
# Always prints one line of valid JSON and exits 0 (an empty list means "no GPUs here").
# Bash builtins only, besides nvidia-smi itself.
set -u

addresses=()
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  IFS=',' read -r -a entries <<< "${CUDA_VISIBLE_DEVICES}"
  for entry in "${entries[@]}"; do
    entry="${entry//[[:space:]]/}"
    if [[ "$entry" =~ ^[0-9]+$ || "$entry" =~ ^(GPU|MIG)-[A-Za-z0-9/-]+$ ]]; then
      addresses+=("$entry")
    else
      break
    fi
  done
elif command -v nvidia-smi > /dev/null 2>&1; then
  if listing="$(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null)"; then
    while IFS= read -r line; do
      line="${line//[[:space:]]/}"
      if [[ "$line" =~ ^[0-9]+$ ]]; then
        addresses+=("$line")
      fi
    done <<< "$listing"
  fi
fi

json=""
for a in "${addresses[@]+"${addresses[@]}"}"; do
  json="${json:+$json, }\"$a\""
done
echo "{\"name\": \"gpu\", \"addresses\": [${json}]}"
