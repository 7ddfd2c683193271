"""Image datasets: folder trees and Parquet image columns as ordinary content-addressed tables.

An image dataset is a table of three columns: the partition (``camera`` unless named otherwise), ``label``
(text) and ``image`` (the encoded PNG/JPEG file's bytes, stored as they came unless ``resize`` changed them).
Every image is decoded once at import so a corrupt file, a file that is not an image or a size that differs
from the others is refused before anything is stored.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfab.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "IMAGE_SUFFIXES",
    "check_image_column",
    "decode_images",
    "encode_png",
    "parse_size",
    "read_image_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image, [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (grayscale)."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(
            f"encode_png takes uint8 [H, W], [H, W, 3] or [H, W, 4]; got {arr.dtype} {arr.shape}"
        )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_images(blobs: Sequence[bytes], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded images into one uint8 array [N, H, W, 3], RGB (grayscale, palette and RGBA converted).

    ``size`` is ``(width, height)``, as for ``--resize WxH``: images of another size are resized (bilinear).
    Without it every image must have the size of the first.
    """
    n = len(blobs)
    if n == 0:
        w, h = size if size is not None else (0, 0)
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    out: np.ndarray | None = None
    for i, blob in enumerate(blobs):
        img = _open(blob, f"image {i}")
        if size is not None and img.size != size:
            img = _resize(img, size)
        if out is None:
            w, h = img.size
            out = np.empty((n, h, w, 3), dtype=np.uint8)
        elif img.size != (out.shape[2], out.shape[1]):
            raise DataError(
                f"image {i} is {img.size[0]}x{img.size[1]} but image 0 is {out.shape[2]}x{out.shape[1]}; "
                "pass size=(width, height) to resize them"
            )
        out[i] = np.asarray(img)
    assert out is not None
    return out


def _open(blob: Any, where: str) -> Any:
    """A loaded RGB PIL image, or a DataError naming ``where``."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DataError(f"{where}: expected the image file's bytes, got {type(blob).__name__}")
    try:
        img = Image.open(io.BytesIO(blob))
        img.load()  # decode now: a truncated file fails here, not in a trainer
    except UnidentifiedImageError:
        raise DataError(f"{where}: not a PNG or JPEG image; replace or remove it") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: corrupt or unreadable image ({exc}); replace or remove it") from None
    if img.format not in ("PNG", "JPEG"):
        raise DataError(f"{where}: a {img.format} image; modelfab takes PNG or JPEG")
    return img if img.mode == "RGB" else img.convert("RGB")


def _resize(img: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return img.resize(size, Image.Resampling.BILINEAR)


def parse_size(text: str) -> tuple[int, int]:
    """``"32x24"`` -> ``(32, 24)`` (width, height)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise DataError(f"--resize {text!r}: give WIDTHxHEIGHT in pixels, e.g. 32x32")
    return int(parts[0]), int(parts[1])


class _SizeCheck:
    """Checks that images agree in size (or resizes them), remembering the first one seen."""

    def __init__(self, resize: tuple[int, int] | None) -> None:
        self.resize = resize
        self.first: tuple[str, tuple[int, int]] | None = None

    def __call__(self, blob: bytes, where: str) -> bytes:
        img = _open(blob, where)
        if self.resize is not None:
            if img.size == self.resize:
                return blob
            return encode_png(np.asarray(_resize(img, self.resize)))
        if self.first is None:
            self.first = (where, img.size)
        elif img.size != self.first[1]:
            w, h = self.first[1]
            raise DataError(
                f"{where}: {img.size[0]}x{img.size[1]} but the dataset's images are {w}x{h} "
                f"(as {self.first[0]}); make them one size, or import with --resize {w}x{h}"
            )
        return blob

    @property
    def size(self) -> tuple[int, int]:
        if self.resize is not None:
            return self.resize
        assert self.first is not None
        return self.first[1]


def read_image_folder(
    root: str | Path, partition_column: str = "camera", resize: tuple[int, int] | None = None
) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The table of a ``<partition>/<label>/*.png|jpg|jpeg`` tree, rows in path order, and the image size.

    Hidden files (``.DS_Store``) are skipped; anything else out of place is refused with its path.
    """
    import pandas as pd

    root = Path(root)
    if partition_column in ("label", "image"):
        raise DataError(f"--partition-column {partition_column!r} clashes with the label and image columns")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give a folder laid out as <partition>/<label>/*.png")
    check = _SizeCheck(resize)
    parts: list[str] = []
    labels: list[str] = []
    images: list[bytes] = []
    layout = "lay it out as <partition>/<label>/*.png|jpg|jpeg"
    for part in _entries(root):
        if not part.is_dir():
            raise DataError(f"{part}: a file where a partition folder belongs; {layout}")
        label_dirs = _entries(part)
        if not label_dirs:
            raise DataError(f"{part}: partition folder without label folders; {layout} or remove it")
        for label_dir in label_dirs:
            if not label_dir.is_dir():
                raise DataError(f"{label_dir}: a file where a label folder belongs; {layout}")
            files = _entries(label_dir)
            if not files:
                raise DataError(f"{label_dir}: empty label folder; add images to it or remove it")
            for f in files:
                if f.is_dir():
                    raise DataError(f"{f}: a folder inside a label folder; {layout}")
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataError(
                        f"{f}: not an image file ({f.suffix or 'no suffix'}); label folders hold only "
                        ".png, .jpg or .jpeg files: move it out"
                    )
                try:
                    blob = f.read_bytes()
                except OSError as exc:
                    raise DataError(f"{f}: cannot be read ({exc.strerror}); fix its permissions") from None
                images.append(check(blob, str(f)))
                parts.append(part.name)
                labels.append(label_dir.name)
    if not images:
        raise DataError(f"{root}: no images; {layout}")
    frame = pd.DataFrame({partition_column: parts, "label": labels, "image": images})
    return frame, check.size


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{folder}: cannot be listed ({exc.strerror}); fix its permissions") from None


def check_image_column(
    df: pd.DataFrame, column: str, source: str, resize: tuple[int, int] | None = None
) -> tuple[pd.DataFrame, tuple[int, int]]:
    """Decode every image of ``df[column]`` (refusing bad ones by row) and return the table with the
    column as bytes (resized and re-encoded as PNG where ``resize`` asks) and the image size."""
    if column not in df.columns:
        raise DataError(
            f"{source}: no column {column!r} (columns: {list(df.columns)}); name the image bytes column "
            "with --image-column"
        )
    if df.empty:
        raise DataError(f"{source}: no images; the table has no rows")
    check = _SizeCheck(resize)
    blobs = []
    for i, blob in enumerate(df[column].tolist()):
        if blob is None:
            raise DataError(f"{source}: row {i}: column {column!r} is empty; every row needs an image")
        blobs.append(
            check(bytes(blob) if isinstance(blob, bytearray | memoryview) else blob, f"{source}: row {i}")
        )
    df = df.copy()
    df[column] = blobs
    return df, check.size


def canonical_order(df: pd.DataFrame, partition_column: str | None) -> pd.DataFrame:
    """Rows ordered by (partition, label), stable within a group: the same images in the same order per
    group give the same digest from a folder tree or from a Parquet file."""
    keys = [c for c in (partition_column, "label") if c is not None and c in df.columns]
    if not keys:
        return df.reset_index(drop=True)
    return df.sort_values(keys, kind="stable").reset_index(drop=True)
