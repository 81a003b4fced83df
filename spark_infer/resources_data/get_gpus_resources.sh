#!/usr/bin/env bash
# Spark GPU discovery script: prints {"name": "gpu", "addresses": ["0", "1", ...]} for this node.
# Use with spark.worker.resource.gpu.discoveryScript / spark.executor.resource.gpu.discoveryScript.
# Honours CUDA_VISIBLE_DEVICES when set (addresses are then the visible ids as listed there).
set -euo pipefail
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  addrs=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | sed '/^\s*$/d')
else
  addrs=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
json=$(echo "$addrs" | sed '/^\s*$/d' | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${json}]}"
