"""Images for the factory's torch trainers: decoding a partition's encoded images into one uint8 array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelfab.errors import ModelfabError, TrainingError

__all__ = ["decode_partition"]


def decode_partition(blobs: Sequence[bytes]) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB. A corrupt image or mixed sizes fail this partition with the reason."""
    from modelfab.data.images import decode_images

    try:
        images = decode_images(list(blobs))
    except ModelfabError as exc:
        raise TrainingError(f"cannot decode this partition's images: {exc}") from None
    return np.asarray(images, dtype=np.uint8)
