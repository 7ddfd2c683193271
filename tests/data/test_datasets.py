"""Dataset import: content-addressed versions from CSV or Parquet; bad files get clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modelfab.data import import_dataset, load_dataset
from modelfab.errors import DataError
from modelfab.store import Workspace


def frame() -> pd.DataFrame:
    return pd.DataFrame({"site": ["a", "b", None], "x": [1.0, None, 3.0], "y": [0, 1, 0]})


def test_csv_and_parquet_of_the_same_table_share_a_version(ws: Workspace, tmp_path: Path) -> None:
    frame().to_csv(tmp_path / "t.csv", index=False)
    frame().to_parquet(tmp_path / "t.parquet", index=False)
    v1, created = import_dataset(ws, "t", tmp_path / "t.csv")
    v1b, created_b = import_dataset(ws, "t", tmp_path / "t.parquet")
    assert created and not created_b and v1b.version == v1.version == 1
    changed = frame().assign(y=[1, 1, 0])
    changed.to_csv(tmp_path / "t2.csv", index=False)
    v2, _ = import_dataset(ws, "t", tmp_path / "t2.csv")
    assert v2.version == 2 and v2.digest != v1.digest
    back = load_dataset(ws, v1)
    assert back.shape == (3, 3) and back["site"].isna().sum() == 1
    kinds = {c["name"]: c["kind"] for c in v1.columns}
    assert kinds == {"site": "categorical", "x": "numeric", "y": "numeric"}


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.csv", "", "empty"),
        ("header.csv", "a,b\n", "no rows"),
        ("dupes.csv", "a,a\n1,2\n", "column names repeat"),
        ("bad.csv", 'a,b\n1,"2\n', "not valid CSV"),
        ("table.xlsx", "whatever", "unknown file type"),
        ("broken.parquet", "not parquet", "cannot be read as parquet"),
    ],
)
def test_bad_files(ws: Workspace, tmp_path: Path, name: str, content: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=needle) as info:
        import_dataset(ws, "t", path)
    assert name in str(info.value)


def test_missing_file_and_bad_name(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        import_dataset(ws, "t", tmp_path / "absent.csv")
    frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="not allowed"):
        import_dataset(ws, "../t", tmp_path / "t.csv")
