"""The runs table appended with delta-rs: the row of a run that started no Spark session.

A run planned from the two Delta logs with nothing to do (`job/planner.py`) ends without a JVM, so
its run record cannot go through Spark; it is appended here with delta-rs, with the columns and types
of `RUNS_SCHEMA` (all nullable, as Spark writes them), so the runs table is one table whichever
wrote each row: Spark reads the rows delta-rs appended and appends after them, and delta-rs appends
to a table Spark created (tests/test_no_jvm_noop.py). A table delta-rs creates gets the property
Spark's first append gives it (no deletion vectors). Where delta-rs cannot append (a catalog name, a table
feature it does not write, storage it cannot reach) `append_run_record` returns False and the caller
writes the row through Spark, as for every other run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from spark_infer.delta_log import is_delta_table, log_reads_enabled, rs_uri
from spark_infer.sinks.delta import RUNS_SCHEMA
from spark_infer.tables import TableRef

log = logging.getLogger("spark_infer")

#: RUNS_SCHEMA's DDL types as Arrow types (Delta: string, integer, long)
_ARROW_TYPES = {"string": "string", "int": "int32", "long": "int64"}


def runs_arrow_schema() -> Any:
    """RUNS_SCHEMA as an Arrow schema (what Spark's `createDataFrame(..., RUNS_SCHEMA)` writes)."""
    import pyarrow as pa

    fields = []
    for part in RUNS_SCHEMA.split(","):
        name, ddl = part.split()
        fields.append(pa.field(name, pa.type_for_alias(_ARROW_TYPES[ddl]), nullable=True))
    return pa.schema(fields)


def append_run_record(ref: str, record: Mapping[str, Any]) -> bool:
    """Append `record` (a `RunSummary.record()`) to the runs table `ref` with delta-rs; False where
    delta-rs cannot (the row is then not written: the caller writes it through Spark)."""
    table = TableRef(ref)
    if not table.is_path or not log_reads_enabled():
        return False
    try:
        import pyarrow as pa
        from deltalake import write_deltalake

        schema = runs_arrow_schema()
        data = pa.Table.from_pylist([{n: record.get(n) for n in schema.names}], schema=schema)
        uri = rs_uri(table.location)
        created = not is_delta_table(uri)
        # "merge": a runs table an older or newer spark-infer wrote may lack or have columns (Spark's
        # append uses mergeSchema too); a missing column is null in this row
        write_deltalake(uri, data, mode="append", schema_mode="merge",
                        configuration={"delta.enableDeletionVectors": "false"} if created else None)
    except Exception as exc:  # noqa: BLE001 - any failure: the caller writes the row through Spark
        log.debug("runs table %s not appended with delta-rs: %s: %s", table.location, type(exc).__name__, exc)
        return False
    return True
