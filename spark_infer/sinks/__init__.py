"""Output formats (see `base.py` for the `OutputTable` protocol); Delta Lake today.

    from spark_infer.sinks import open_sink
    out = open_sink("delta", spark, "/data/product_embeddings", change_data_feed=True)
"""

from __future__ import annotations

from spark_infer.sinks.base import (
    ClaimsUnits,
    Committed,
    FilesRecord,
    OutputTable,
    RecordsUnitFiles,
    RowsAtVersion,
    discover,
    open_sink,
    register_sink,
    registered_sinks,
)

__all__ = ["ClaimsUnits", "Committed", "FilesRecord", "OutputTable", "RecordsUnitFiles", "RowsAtVersion", "discover", "open_sink", "register_sink",
           "registered_sinks"]
