"""How much memory a model's weights take once loaded, read from the files' headers (no load).

    from spark_infer.models.size import weights_in_memory
    weights_in_memory(snapshot, "float32")    # bytes: parameters x 4, from safetensors headers

Safetensors files say each tensor's dtype and shape in a JSON header, so the parameter count is exact
without reading a weight. Other formats (and files the driver does not hold) count their size on disk.
"""

from __future__ import annotations

import json
import math
import os
import struct

from spark_infer.models.base import ModelSnapshot

#: files that hold weights; where safetensors are present the loader uses only them
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".gguf")
#: sources whose snapshot is a folder on this machine (no download to look at a header)
LOCAL_SOURCES = frozenset({"local", "packaged"})
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def safetensors_parameters(path: str) -> int:
    """Parameters in one safetensors file, from its header."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def weight_files(snapshot: ModelSnapshot) -> list[tuple[str, int]]:
    """(relative path, bytes) of the files the loader reads weights from."""
    files = [(p, n) for p, n in snapshot.manifest if p.endswith(WEIGHT_SUFFIXES)]
    safetensors = [(p, n) for p, n in files if p.endswith(".safetensors")]
    return safetensors or files


def weights_in_memory(snapshot: ModelSnapshot, dtype: str = "float32") -> int:
    """Bytes the weights take loaded in `dtype`: exact for safetensors the driver holds, else their
    size on disk."""
    files = weight_files(snapshot)
    if not files:
        return 0
    folder = snapshot.locator if snapshot.source in LOCAL_SOURCES else None
    if folder is not None and snapshot.source == "packaged":
        folder = snapshot.local_dir()
    total = 0
    for rel, size in files:
        path = os.path.join(folder, rel) if folder else None
        if path and rel.endswith(".safetensors") and os.path.isfile(path):
            try:
                total += safetensors_parameters(path) * _BYTES.get(dtype, 4)
                continue
            except (OSError, ValueError, KeyError, struct.error):
                pass  # an unreadable header: count the file's size instead
        total += size
    return total
