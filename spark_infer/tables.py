"""Delta table references: a path or a catalog name, asked through Spark SQL (classic or Connect).

Only SQL and the DataFrame reader are used (`DESCRIBE DETAIL`, `DESCRIBE HISTORY`, `versionAsOf`),
never the `DeltaTable` Python API, so the same code runs on Spark Connect sessions, whose servers
have Delta but whose clients have no JVM.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession


def split_name(name: str) -> list[str]:
    """The parts of a dotted table name, backquotes removed: `main.shop.products` -> [main, shop,
    products]; ``main.`my-shop`.`a.b` `` -> [main, my-shop, a.b] (a doubled backquote is one).

    Text right after a closing backquote belongs to the same part, so a suffix appended to a quoted
    name (the runs table's default ``main.shop.`my-table`_runs``) names `my-table_runs`.
    """
    parts: list[str] = []
    part, i, quoted, n = "", 0, False, len(name)
    while i < n:
        ch = name[i]
        if quoted:
            if ch == "`" and i + 1 < n and name[i + 1] == "`":
                part, i = part + "`", i + 2
                continue
            if ch == "`":
                quoted = False
            else:
                part += ch
        elif ch == "`":
            quoted = True
        elif ch == ".":
            parts.append(part)
            part = ""
        else:
            part += ch
        i += 1
    parts.append(part)
    if quoted or any(not p.strip() for p in parts):
        raise ValueError(f"{name!r} is not a table name (catalog.schema.table, parts in backquotes when needed)")
    return parts


def quote_name(name: str) -> str:
    """`catalog`.`schema`.`table` for a dotted name, each part quoted once (backquotes inside a part
    doubled): what SQL and the DataFrame reader and writer accept for any name."""
    return ".".join("`" + part.replace("`", "``") + "`" for part in split_name(name))


#: a URI's scheme (two letters at least: `C:` is a Windows drive, not a scheme)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def normalize_location(location: str) -> str:
    """One spelling per storage location: `file:/x`, `file:///x` and `/x` are `/x`; no trailing slash.

    A catalog table's location (`DESCRIBE DETAIL`) and the path a user gives for the same table differ
    only in such spelling, and what identifies a table (its Delta application ids) must not."""
    loc = location.strip()
    scheme = _SCHEME.match(loc)
    if scheme and scheme[1].lower() == "file":
        parsed = urlparse(loc)
        if parsed.netloc not in ("", "localhost"):
            return loc.rstrip("/")
        loc = unquote(parsed.path) or "/"
    elif scheme:
        rest = loc[len(scheme[0]):]
        return scheme[1].lower() + ":" + (rest.rstrip("/") or rest)
    return os.path.normpath(loc) if os.path.isabs(loc) else loc.rstrip("/")


@dataclass(frozen=True)
class TableRef:
    """A Delta table given as a filesystem/object-store path or a catalog table name.

    A path is a URI (`s3://...`, `file:/...`), an absolute path, or a relative one that starts with `.`
    or `~` or holds a `/`; anything else is a catalog name (`products`, `shop.products`,
    `main.shop.products`, parts in backquotes when they need it). The local filesystem is never asked:
    a folder called `main.shop.products` in the working directory does not turn the name into a path
    (write `./main.shop.products` for that folder).
    """

    ref: str

    @property
    def is_path(self) -> bool:
        r = self.ref.strip()
        if "://" in r or r.startswith(("/", ".", "~")) or (_SCHEME.match(r) and "`" not in r):
            return True
        if "`" in r:  # a quoted name: a slash inside backquotes is part of the name
            return False
        return "/" in r or os.sep in r

    @property
    def location(self) -> str:
        """The absolute path or URI (for a catalog name: the name itself)."""
        if not self.is_path:
            return self.ref
        if _SCHEME.match(self.ref):  # a URI: file: ones become the local path, others stay as given
            return normalize_location(self.ref) if self.ref[:5].lower() == "file:" else self.ref
        return os.path.abspath(os.path.expanduser(self.ref))

    def __str__(self) -> str:
        return self.location

    @property
    def name(self) -> str:
        """A catalog table's name as SQL and the DataFrame API take it: every part in backquotes."""
        return quote_name(self.ref)

    @property
    def sql_name(self) -> str:
        """How SQL names the table: delta.`/path` or `catalog`.`schema`.`table`."""
        if self.is_path:
            return "delta.`" + self.location.replace("`", "``") + "`"
        return self.name

    def detail(self, spark: SparkSession) -> dict[str, Any]:
        """`DESCRIBE DETAIL`: format, location, partitionColumns, properties, numFiles, ..."""
        return spark.sql(f"DESCRIBE DETAIL {self.sql_name}").first().asDict(recursive=True)

    def exists(self, spark: SparkSession) -> bool:
        """True when a Delta table is there (any error describing it means: no)."""
        return self.delta_detail(spark) is not None

    def delta_detail(self, spark: SparkSession) -> dict[str, Any] | None:
        """`detail` when a Delta table is there, else None (`exists` and the detail in one look)."""
        if not self.is_path and not spark.catalog.tableExists(self.name):
            return None
        try:
            detail = self.detail(spark)
        except Exception:  # noqa: BLE001 - not a Delta table / no such path
            return None
        return detail if str(detail.get("format", "")).lower() == "delta" else None

    def location_in(self, spark: SparkSession) -> str:
        """Where the table's files are (a catalog table's storage location), spelled as
        `normalize_location` does, so a table reached by name and by path gives one string."""
        return normalize_location(self.location if self.is_path else str(self.detail(spark)["location"]))

    def version(self, spark: SparkSession) -> int:
        return int(spark.sql(f"DESCRIBE HISTORY {self.sql_name} LIMIT 1").first()["version"])

    def partition_columns(self, spark: SparkSession) -> list[str]:
        return list(self.detail(spark)["partitionColumns"])

    def read(self, spark: SparkSession, version: int | None = None) -> DataFrame:
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location) if self.is_path else reader.table(self.name)
