"""Images for the factory's torch trainers: decoding a partition's encoded images into one uint8 array."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from modelfab.errors import ModelfabError, TrainingError

__all__ = ["decode_partition"]


def decode_partition(blobs: Sequence[bytes]) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB. A corrupt image or mixed sizes fail this partition with the reason."""
    try:
        from modelfab.data.images import decode_images
    except ImportError:  # the image-dataset module is not in this tree: decode here with Pillow
        decode_images = _decode_with_pil
    try:
        images = decode_images(list(blobs))
    except ModelfabError as exc:
        raise TrainingError(f"cannot decode this partition's images: {exc}") from None
    return np.asarray(images, dtype=np.uint8)


def _decode_with_pil(blobs: Sequence[bytes], size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = []
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                out.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError, TypeError) as exc:
            raise TrainingError(f"image {i} cannot be decoded: {exc}") from None
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise TrainingError(f"images of mixed sizes {sorted(shapes)}; import them with a resize")
    return np.stack(out) if out else np.zeros((0, 1, 1, 3), dtype=np.uint8)
