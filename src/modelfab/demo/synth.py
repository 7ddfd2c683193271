"""Synthetic data for the quickstart, tests and benchmarks (nothing is downloaded): churn-like customers of
many sites, and camera-like images of many cameras."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["camera_frame", "churn_frame", "write_camera_folder"]

PLANS = np.array(["basic", "standard", "premium"])
CONTRACTS = np.array(["monthly", "annual", "two_year"])


def churn_frame(
    sites: int = 200,
    rows_per_site: int = 2000,
    seed: int = 0,
    tiny_sites: int = 2,
    shift: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Customers of ``sites`` sites; each site has its own churn drivers, so one model per site pays off.

    ``tiny_sites`` extra sites get too few rows to train (the factory must record and skip them).
    ``shift`` maps site names to a behaviour change (used by the iteration loop's demo).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for s in range(sites + tiny_sites):
        name = f"site-{s:03d}"
        n = int(rng.integers(int(rows_per_site * 0.75), int(rows_per_site * 1.25) + 1)) if s < sites else 20
        w = rng.normal(0, 1, size=6)  # site-specific effects
        tenure = rng.gamma(2.0, 12.0, n).round()
        spend = np.clip(rng.normal(50 + 10 * w[0], 18, n), 5, None).round(2)
        calls = rng.poisson(np.exp(0.3 + 0.3 * w[1]), n)
        plan = PLANS[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
        contract = CONTRACTS[rng.choice(3, n, p=[0.6, 0.25, 0.15])]
        plan_eff = np.select([plan == "basic", plan == "standard"], [0.6 * w[2], 0.0], -0.6 * w[2])
        logit = (
            -0.8
            - 0.04 * (1 + 0.5 * w[3]) * tenure
            + 0.02 * (spend - 50) * (1 + 0.5 * w[4])
            + (0.35 + 0.2 * w[5]) * calls
            + plan_eff
            - 1.2 * (contract != "monthly")
        )
        if shift and name in shift:
            logit = logit + shift[name] * (calls - 1.5) - 0.08 * shift[name] * tenure
        churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        frame = pd.DataFrame(
            {
                "site": name,
                "tenure": tenure,
                "monthly_spend": spend,
                "support_calls": calls,
                "plan": plan,
                "contract": contract,
                "churned": churned,
            }
        )
        frame.loc[rng.random(n) < 0.02, "monthly_spend"] = np.nan
        frame.loc[rng.random(n) < 0.01, "plan"] = None
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


SMALL_CAMERA_IMAGES = 12  # below any sensible min_rows: the factory must record and skip these cameras


def camera_frame(
    cameras: int = 8,
    images_per_camera: int = 200,
    size: int = 32,
    seed: int = 0,
    small_cameras: int = 1,
    one_class_cameras: int = 1,
) -> pd.DataFrame:
    """Camera-like PNG images, columns ``camera``, ``label`` (``bike`` or ``empty``) and ``image`` (bytes).

    Cameras come in pairs watching one street from opposite sides: a street has its own background (two
    colours in a striped, noisy texture) and bike size; each camera its own tint, lighting (brightness and
    contrast) and viewpoint (one of four spots where bikes park). An image is ``bike`` when a bike (two wheels
    and a frame, dark) stands in the camera's spot, ``empty`` otherwise. Most ``empty`` images (and a few
    ``bike`` ones) show a bike parked across the street (the spot mirrored through the centre): it does not
    count there, yet it is exactly where the partner camera's spot lies, so one global model confuses the
    two (only tint and lighting tell them apart) while a per-camera model (or fine-tuning) does not.

    Of the ``cameras`` cameras, the last ``small_cameras`` have only a few images and the
    ``one_class_cameras`` before them only ``empty`` ones; both are for the factory to skip with a reason.
    """
    import pandas as pd

    from modelfab.data.images import encode_png

    if cameras < small_cameras + one_class_cameras or min(cameras, small_cameras, one_class_cameras) < 0:
        raise ValueError("cameras must be at least small_cameras + one_class_cameras, none negative")
    if size < 12:
        raise ValueError("size must be at least 12 pixels for a bike to be drawn")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # Four viewpoints; cameras come in pairs watching one street from opposite sides: the same street
    # (texture, colours, bike size), each camera's spot exactly where its partner sees the far side.
    palette = rng.uniform(0.45, 0.9, size=(2, 3)).astype(np.float32)
    frames = []
    for c in range(cameras):
        name = f"cam-{c:03d}"
        small = c >= cameras - small_cameras
        one_class = not small and c >= cameras - small_cameras - one_class_cameras
        n = min(SMALL_CAMERA_IMAGES, images_per_camera) if small else images_per_camera
        street = np.random.default_rng([seed, (c // 4) * 2 + c % 2])
        street_colours = palette + street.normal(0, 0.1, size=(2, 3))
        angle, freq = street.uniform(0, np.pi), street.uniform(0.25, 0.9)
        phase = street.uniform(0, 2 * np.pi)
        scale = street.uniform(0.8, 1.15) * size / 32
        # The camera's own sensor and light, drawn before its images so it looks the same whatever n is.
        colours = np.clip(street_colours + rng.normal(0, 0.04, size=(2, 3)), 0.3, 1.0).astype(np.float32)
        brightness, contrast = rng.uniform(-0.08, 0.08), rng.uniform(0.75, 1.1)
        view = c % 4
        spot = np.array([np.cos(view * np.pi / 2), np.sin(view * np.pi / 2)], dtype=np.float32)
        spot = spot * 0.2 * size + size / 2
        stripes = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        background = stripes[..., None] * colours[0] + (1 - stripes[..., None]) * colours[1]

        cam_rng = np.random.default_rng(rng.integers(2**63))
        labels = np.zeros(n, dtype=bool) if one_class else cam_rng.random(n) < 0.5
        across = cam_rng.random(n) < np.where(labels, 0.1, 0.6)
        images = np.repeat(background[None], n, axis=0)
        images += cam_rng.normal(0, 0.04, size=images.shape).astype(np.float32)
        for i in range(n):
            for present, centre in ((labels[i], spot), (across[i], size - spot)):
                if present:
                    jitter = cam_rng.normal(0, 1.0, size=2).astype(np.float32)
                    ink = _bike_mask(xx, yy, centre + jitter, scale * cam_rng.uniform(0.9, 1.1))
                    tint = cam_rng.uniform(0.0, 0.2, size=3).astype(np.float32)
                    images[i] = images[i] * (1 - ink[..., None]) + ink[..., None] * tint
        light = brightness + cam_rng.normal(0, 0.03, size=(n, 1, 1, 1)).astype(np.float32)
        images = (images - 0.5) * contrast + 0.5 + light
        pixels = np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8)
        frames.append(
            pd.DataFrame(
                {
                    "camera": name,
                    "label": np.where(labels, "bike", "empty"),
                    "image": [encode_png(p) for p in pixels],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _bike_mask(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    """Coverage in [0, 1] of a side-on bike: two wheels (rings) and a frame joining hubs and saddle."""
    cx, cy = float(centre[0]), float(centre[1])
    r, half, width = 3.4 * scale, 4.6 * scale, max(0.9, 0.9 * scale)
    dist = np.full(xx.shape, np.inf, dtype=np.float32)
    for hub in (cx - half, cx + half):
        dist = np.minimum(dist, np.abs(np.hypot(xx - hub, yy - cy) - r))
    saddle = (cx - 0.3 * half, cy - 1.5 * r)
    bar = (cx + 0.5 * half, cy - 1.2 * r)
    for a, b in (
        ((cx - half, cy), saddle),
        (saddle, (cx, cy)),
        ((cx, cy), (cx + half, cy)),
        ((cx + half, cy), bar),
    ):
        dist = np.minimum(dist, _segment_distance(xx, yy, a, b))
    coverage: np.ndarray = np.clip(width - dist + 0.5, 0.0, 1.0)
    return coverage


def _segment_distance(
    xx: np.ndarray, yy: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    out: np.ndarray = np.hypot(xx - ax - t * dx, yy - ay - t * dy)
    return out


def write_camera_folder(
    frame: pd.DataFrame, root: str | Path, partition_column: str = "camera", image_column: str = "image"
) -> Path:
    """Write ``frame`` as the folder tree ``modelfab data import`` reads: ``root/<camera>/<label>/NNNNN.png``,
    numbered in the frame's order within each (camera, label), so the import gives the rows back in order."""
    root = Path(root)
    counts: dict[tuple[str, str], int] = {}
    for part, label, blob in zip(frame[partition_column], frame["label"], frame[image_column], strict=True):
        key = (str(part), str(label))
        i = counts.get(key, 0)
        counts[key] = i + 1
        folder = root / key[0] / key[1]
        if i == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(blob)
    return root
