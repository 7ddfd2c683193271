"""Import CSV/Parquet files and image folders as immutable dataset versions and load them back."""

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
        if df[col].dtype == object and _is_binary(df[col]):
            continue  # image bytes (an image dataset's column) stay bytes
        if df[col].dtype == object or str(df[col].dtype).startswith("string"):
            # Mixed objects are stored as text: one type per column keeps the digest stable.
            df[col] = df[col].map(lambda x: x if x is None or isinstance(x, str) else str(x)).astype(object)
            df[col] = df[col].where(df[col].notna(), None)
    return df.reset_index(drop=True)


def _is_binary(s: pd.Series) -> bool:
    values = s.dropna()
    return len(values) > 0 and all(isinstance(v, bytes) for v in values)


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
        elif s.dtype == object and _is_binary(s):
            kind = "binary"
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


def import_dataset(
    ws: Workspace,
    name: str,
    path: str | Path,
    *,
    image_column: str | None = None,
    partition_column: str = "camera",
    resize: tuple[int, int] | None = None,
) -> tuple[DatasetVersion, bool]:
    """Import a file as a dataset version. Identical data returns the existing version (created=False).

    A folder is an image tree ``<partition>/<label>/*.png|jpg|jpeg`` (``partition_column`` names its first
    level); a table with ``image_column`` holds encoded images. Images are all decoded and checked before
    anything is stored; ``resize`` is ``(width, height)`` for images of mixed sizes.
    """
    from modelfab.data import images

    _check_name(name)
    path = Path(path)
    if path.is_dir():
        df, size = images.read_image_folder(path, partition_column, resize)
        return _store_images(ws, name, normalize(df, str(path)), str(path), "image", partition_column, size)
    if image_column is None:
        if resize is not None:
            raise DataError(f"{path}: --resize applies to images; name the image column with --image-column")
        return _store(ws, name, read_table(path), str(path))
    df, size = images.check_image_column(read_table(path), image_column, str(path), resize)
    if "label" in df.columns:
        # Labels are text, typed as a folder tree's (built from a list of str), so both digests agree.
        import pandas as pd

        labels = [None if v is None or v != v else str(v) for v in df["label"].tolist()]
        df = df.assign(label=pd.Series(labels, index=df.index))
    return _store_images(ws, name, df, str(path), image_column, partition_column, size)


def _store_images(
    ws: Workspace,
    name: str,
    df: pd.DataFrame,
    source: str,
    image_column: str,
    partition_column: str,
    size: tuple[int, int],
) -> tuple[DatasetVersion, bool]:
    from modelfab.data.images import canonical_order

    df = canonical_order(df, partition_column)
    columns = column_kinds(df)
    for c in columns:
        if c["name"] == image_column:
            # The trainers and the exported graph's input shape read the size from here.
            c.update(kind="image", width=size[0], height=size[1])
    return _store(ws, name, df, source, columns)


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


def _store(
    ws: Workspace, name: str, df: pd.DataFrame, source: str, columns: list[dict[str, Any]] | None = None
) -> tuple[DatasetVersion, bool]:
    digest = table_digest(df)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    artifact = ws.artifacts.put(buf.getvalue())
    kinds = column_kinds(df) if columns is None else columns
    return ws.registry.add_dataset(name, digest, artifact.digest, len(df), kinds, source)


def load_dataset(ws: Workspace, dataset: DatasetVersion) -> pd.DataFrame:
    import pandas as pd

    data = ws.artifacts.get(dataset.data_digest)
    return pd.read_parquet(io.BytesIO(data))
