"""Import CSV/Parquet files as immutable dataset versions and load them back."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfab.errors import DataError
from modelfab.store import DatasetVersion, Workspace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["column_kinds", "import_dataset", "import_frame", "load_dataset", "read_table", "table_digest"]

MAX_COLUMNS = 10_000


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, with errors that name the file and what to do."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the path of a .csv or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            _check_csv_header(path)
            df = pd.read_csv(path, low_memory=False)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; use .csv or .parquet")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; a dataset needs a header row and data rows") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not valid CSV: {str(exc).strip()}") from None
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {suffix.lstrip('.')}: {exc}") from None
    return normalize(df, str(path))


def _check_csv_header(path: Path) -> None:
    """pandas renames repeated headers (a, a.1); a repeated name is a mistake the user should see."""
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: column names repeat: {dupes}; give every column a distinct name")


def normalize(df: pd.DataFrame, source: str) -> pd.DataFrame:
    import pandas as pd

    if df.shape[1] == 0 or df.shape[0] == 0:
        raise DataError(f"{source}: the table has no {'columns' if df.shape[1] == 0 else 'rows'}")
    if df.shape[1] > MAX_COLUMNS:
        raise DataError(f"{source}: {df.shape[1]} columns is more than the {MAX_COLUMNS} modelfab accepts")
    names = [str(c) for c in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{source}: column names repeat: {dupes}; give every column a distinct name")
    df = df.copy()
    df.columns = pd.Index(names)
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith("string"):
            # Mixed objects are stored as text: one type per column keeps the digest stable.
            df[col] = df[col].map(lambda x: x if x is None or isinstance(x, str) else str(x)).astype(object)
            df[col] = df[col].where(df[col].notna(), None)
    return df.reset_index(drop=True)


def column_kinds(df: pd.DataFrame) -> list[dict[str, Any]]:
    import pandas as pd

    out = []
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_bool_dtype(s):
            kind = "bool"
        elif pd.api.types.is_numeric_dtype(s):
            kind = "numeric"
        elif pd.api.types.is_datetime64_any_dtype(s):
            kind = "datetime"
        else:
            kind = "categorical"
        out.append({"name": col, "dtype": str(s.dtype), "kind": kind, "missing": int(s.isna().sum())})
    return out


def table_digest(df: pd.DataFrame) -> str:
    """sha256 of the table's content and schema: the same data gives the same digest whatever the file."""
    import pandas as pd

    h = hashlib.sha256()
    for col in df.columns:
        h.update(f"{col}\0{df[col].dtype}\0".encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name):
        raise DataError(f"dataset name {name!r} is not allowed: use letters, digits, '.', '_' or '-'")


def import_dataset(ws: Workspace, name: str, path: str | Path) -> tuple[DatasetVersion, bool]:
    """Import a file as a dataset version. Identical data returns the existing version (created=False)."""
    _check_name(name)
    return _store(ws, name, read_table(path), str(path))


def import_frame(ws: Workspace, name: str, df: pd.DataFrame, source: str) -> tuple[DatasetVersion, bool]:
    """Import a table held in memory (no file is written outside the artifact store, which seals it
    when the workspace has a key); ``source`` says where it came from."""
    import pandas as pd

    _check_name(name)
    # Through Parquet in memory, so columns get the types an imported Parquet file of this table gets
    # (an object column of floats and None is read back as float64, not as text).
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, index=False)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: cannot be stored as a table: {exc}") from None
    return _store(ws, name, normalize(pd.read_parquet(io.BytesIO(buf.getvalue())), source), source)


def _store(ws: Workspace, name: str, df: pd.DataFrame, source: str) -> tuple[DatasetVersion, bool]:
    digest = table_digest(df)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    artifact = ws.artifacts.put(buf.getvalue())
    return ws.registry.add_dataset(name, digest, artifact.digest, len(df), column_kinds(df), source)


def load_dataset(ws: Workspace, dataset: DatasetVersion) -> pd.DataFrame:
    import pandas as pd

    data = ws.artifacts.get(dataset.data_digest)
    return pd.read_parquet(io.BytesIO(data))
