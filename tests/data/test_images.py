"""Image datasets: folder trees and Parquet image columns become content-addressed, sealed tables; every bad
image is refused with its path before anything is stored; the camera generator is learnable per camera."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelfab.cli.main import app
from modelfab.data import import_dataset, load_dataset
from modelfab.data.images import decode_images, encode_png
from modelfab.demo.synth import camera_frame, write_camera_folder
from modelfab.errors import DataError
from modelfab.settings import Settings
from modelfab.store import Workspace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cams() -> pd.DataFrame:
    return camera_frame(
        cameras=3, images_per_camera=12, size=16, seed=3, small_cameras=0, one_class_cameras=0
    )


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    return encode_png(np.full((size[1], size[0], 3), colour, dtype=np.uint8))


def tree(root: Path) -> Path:
    """A small valid tree: two cameras, two labels each."""
    for cam in ("c1", "c2"):
        for label, colour in (("bike", (200, 10, 10)), ("empty", (10, 200, 10))):
            folder = root / cam / label
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i}.png").write_bytes(solid((colour[0], colour[1], i * 50)))
    return root


def nothing_stored(ws: Workspace, home: Path) -> bool:
    files = (
        [p for p in (home / "artifacts").rglob("*") if p.is_file()] if (home / "artifacts").exists() else []
    )
    return ws.registry.list_datasets() == [] and files == []


# -- decode / encode ----------------------------------------------------------------------------------------


def test_decode_converts_grayscale_rgba_and_jpeg_to_rgb() -> None:
    from PIL import Image

    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    gray = np.full((4, 6), 77, dtype=np.uint8)
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 1] = 120
    jpeg = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), 90, dtype=np.uint8)).save(jpeg, format="JPEG", quality=95)
    out = decode_images([encode_png(rgb), encode_png(gray), encode_png(rgba), jpeg.getvalue()])
    assert out.dtype == np.uint8 and out.shape == (4, 4, 6, 3)
    assert np.array_equal(out[0], rgb)
    assert (out[1] == 77).all()
    assert (out[2][..., 1] == 120).all() and (out[2][..., 0] == 0).all()
    assert np.abs(out[3].astype(int) - 90).max() <= 3


def test_decode_resizes_to_width_by_height_and_refuses_mixed_sizes_without() -> None:
    blobs = [solid((1, 2, 3), (8, 8)), solid((1, 2, 3), (10, 6))]
    assert decode_images(blobs, size=(12, 4)).shape == (2, 4, 12, 3)
    with pytest.raises(DataError, match="image 1 is 10x6 but image 0 is 8x8"):
        decode_images(blobs)
    with pytest.raises(DataError, match="image 0: not a PNG or JPEG"):
        decode_images([b"hello"])
    assert decode_images([], size=(5, 7)).shape == (0, 7, 5, 3)


def test_decode_handles_a_few_thousand_small_images_in_one_call(cams: pd.DataFrame) -> None:
    blobs = cams["image"].tolist() * 100  # 3,600 images
    out = decode_images(blobs)
    assert out.shape == (len(blobs), 16, 16, 3)
    assert np.array_equal(out[0], out[len(cams)])


# -- import: both layouts ----------------------------------------------------------------------------------


def test_folder_and_parquet_of_the_same_images_share_a_version(
    ws: Workspace, cams: pd.DataFrame, tmp_path: Path
) -> None:
    write_camera_folder(cams, tmp_path / "tree")
    (tmp_path / "tree" / ".DS_Store").write_bytes(b"junk")  # hidden files are skipped
    v1, created = import_dataset(ws, "cams", tmp_path / "tree")
    assert created and v1.rows == len(cams)
    image_col = next(c for c in v1.columns if c["name"] == "image")
    assert (image_col["kind"], image_col["width"], image_col["height"]) == ("image", 16, 16)
    back = load_dataset(ws, v1)
    assert list(back.columns) == ["camera", "label", "image"]
    expected = cams.sort_values(["camera", "label"], kind="stable").reset_index(drop=True)
    assert back["image"].tolist() == expected["image"].tolist()
    assert back["label"].tolist() == expected["label"].tolist()

    # The same table as Parquet, cameras in another order (order within a camera and label kept): the
    # same version.
    groups = [g for _, g in cams.groupby("camera", sort=True)]
    pd.concat(groups[::-1]).to_parquet(tmp_path / "cams.parquet", index=False)
    v2, created2 = import_dataset(ws, "cams", tmp_path / "cams.parquet", image_column="image")
    assert not created2 and v2.version == v1.version and v2.digest == v1.digest
    # Again from the folder: stable.
    v3, created3 = import_dataset(ws, "cams", tmp_path / "tree")
    assert not created3 and v3.digest == v1.digest
    # A changed picture is a new version.
    first = sorted((tmp_path / "tree" / "cam-000" / "bike").iterdir())[0]
    first.write_bytes(solid((0, 0, 0), (16, 16)))
    v4, created4 = import_dataset(ws, "cams", tmp_path / "tree")
    assert created4 and v4.version == 2 and v4.digest != v1.digest


def test_partition_column_is_named_at_import(ws: Workspace, tmp_path: Path) -> None:
    version, _ = import_dataset(ws, "sites", tree(tmp_path / "t"), partition_column="site")
    frame = load_dataset(ws, version)
    assert list(frame.columns) == ["site", "label", "image"]
    assert frame["site"].tolist() == ["c1"] * 4 + ["c2"] * 4
    assert frame["label"].tolist() == ["bike", "bike", "empty", "empty"] * 2


def test_parquet_image_column_with_another_name_and_numeric_labels(ws: Workspace, tmp_path: Path) -> None:
    df = pd.DataFrame({"site": ["a", "a"], "label": [1, 0], "pixels": [solid((9, 9, 9)), solid((1, 1, 1))]})
    df.to_parquet(tmp_path / "p.parquet", index=False)
    version, _ = import_dataset(
        ws, "p", tmp_path / "p.parquet", image_column="pixels", partition_column="site"
    )
    back = load_dataset(ws, version)
    assert back["label"].tolist() == ["0", "1"]  # text, ordered by label within the site
    assert decode_images(back["pixels"].tolist())[0, 0, 0].tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"no column 'image'.*--image-column") as info:
        import_dataset(ws, "p", tmp_path / "p.parquet", image_column="image")
    assert "p.parquet" in str(info.value)


def test_images_are_sealed_at_rest_when_the_workspace_has_a_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ws = Workspace.open(Settings(home=home, encryption_key="22" * 32))
    try:
        version, _ = import_dataset(ws, "t", tree(tmp_path / "t"))
        assert decode_images(load_dataset(ws, version)["image"].tolist()).shape == (8, 8, 8, 3)
    finally:
        ws.close()
    stored = [p for p in home.rglob("*") if p.is_file()]
    assert stored and not any(PNG_MAGIC in p.read_bytes() for p in stored)
    # Without a key the same import stores the PNG bytes as they are: the check above can fail.
    plain = Workspace.open(Settings(home=tmp_path / "plain"))
    try:
        import_dataset(plain, "t", tmp_path / "t")
    finally:
        plain.close()
    assert any(PNG_MAGIC in p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file())


# -- bad input ----------------------------------------------------------------------------------------------


def _corrupt(root: Path) -> Path:
    bad = root / "c2" / "bike" / "1.png"
    noisy = np.random.default_rng(0).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    bad.write_bytes(encode_png(noisy)[:-40])  # truncated inside the pixel data
    return bad


def _garbage_png(root: Path) -> Path:
    bad = root / "c1" / "empty" / "0.png"
    bad.write_bytes(b"this is text, not a picture")
    return bad


def _not_image(root: Path) -> Path:
    bad = root / "c1" / "bike" / "notes.txt"
    bad.write_text("hello")
    return bad


def _empty_label(root: Path) -> Path:
    bad = root / "c2" / "parked"
    bad.mkdir()
    return bad


def _stray_file(root: Path) -> Path:
    bad = root / "c1" / "photo.png"
    bad.write_bytes(solid((1, 1, 1)))
    return bad


def _mixed_size(root: Path) -> Path:
    bad = root / "c2" / "empty" / "0.png"
    bad.write_bytes(solid((1, 1, 1), (12, 8)))
    return bad


def _no_images(root: Path) -> Path:
    shutil.rmtree(root)
    root.mkdir()
    return root


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_corrupt, "corrupt or unreadable image"),
        (_garbage_png, "not a PNG or JPEG image"),
        (_not_image, r"not an image file \(.txt\)"),
        (_empty_label, "empty label folder"),
        (_stray_file, "a file where a label folder belongs"),
        (_mixed_size, r"12x8 but the dataset's images are 8x8 \(as .*c1/bike/0.png\).*--resize 8x8"),
        (_no_images, "no images"),
    ],
)
def test_bad_folders_name_the_file_and_store_nothing(
    ws: Workspace, settings: Settings, tmp_path: Path, damage: object, needle: str
) -> None:
    root = tree(tmp_path / "t")
    bad = damage(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=needle) as info:
        import_dataset(ws, "t", root)
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message
    assert nothing_stored(ws, settings.home)


def test_resize_makes_mixed_sizes_one_size(ws: Workspace, tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    _mixed_size(root)
    version, _ = import_dataset(ws, "t", root, resize=(8, 8))
    pixels = decode_images(load_dataset(ws, version)["image"].tolist())
    assert pixels.shape == (8, 8, 8, 3)
    with pytest.raises(DataError, match="--resize applies to images"):
        pd.DataFrame({"a": [1]}).to_csv(tmp_path / "x.csv", index=False)
        import_dataset(ws, "x", tmp_path / "x.csv", resize=(8, 8))


def test_bad_parquet_images_name_the_row(ws: Workspace, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"label": ["a", "b"], "image": [solid((1, 1, 1)), b"\x89PNG broken"]}).to_parquet(path)
    with pytest.raises(
        DataError, match=r"p.parquet: row 1: corrupt or unreadable|p.parquet: row 1: not a PNG"
    ):
        import_dataset(ws, "p", path, image_column="image")
    pd.DataFrame({"label": ["a", "b"], "image": [solid((1, 1, 1)), solid((1, 1, 1), (4, 4))]}).to_parquet(
        path
    )
    with pytest.raises(DataError, match=r"row 1: 4x4 but the dataset's images are 8x8 \(as .*row 0\)"):
        import_dataset(ws, "p", path, image_column="image")
    assert nothing_stored(ws, settings.home)


def test_cli_imports_a_folder_with_resize_and_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "home"))
    root = tree(tmp_path / "t")
    _mixed_size(root)
    runner = CliRunner()
    refused = runner.invoke(app, ["data", "import", "cams", str(root)])
    assert refused.exit_code == 1 and "--resize 8x8" in str(refused.exception)
    ok = runner.invoke(
        app, ["data", "import", "cams", str(root), "--resize", "8x8", "--partition-column", "site", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert '"rows": 8' in ok.output and '"site"' in ok.output
    bad = runner.invoke(app, ["data", "import", "cams", str(root), "--resize", "8by8"])
    assert bad.exit_code == 1 and "WIDTHxHEIGHT" in str(bad.exception)
    again = runner.invoke(
        app, ["data", "import", "cams", str(root), "--resize", "8x8", "--partition-column", "site"]
    )
    assert again.exit_code == 0 and "unchanged" in again.output and "images 8x8" in again.output
    clash = runner.invoke(app, ["data", "import", "cams", str(root), "--partition-column", "label"])
    assert clash.exit_code == 1 and "clashes" in str(clash.exception)


# -- the camera generator -----------------------------------------------------------------------------------


def test_camera_frame_counts_labels_and_determinism() -> None:
    df = camera_frame(cameras=5, images_per_camera=40, size=24, seed=7, small_cameras=1, one_class_cameras=2)
    assert list(df.columns) == ["camera", "label", "image"]
    counts = df.groupby("camera").size().to_dict()
    assert counts == {"cam-000": 40, "cam-001": 40, "cam-002": 40, "cam-003": 40, "cam-004": 12}
    labels = df.groupby("camera")["label"].agg(lambda s: set(s)).to_dict()
    assert labels["cam-000"] == labels["cam-001"] == {"bike", "empty"}
    assert labels["cam-002"] == labels["cam-003"] == {"empty"}  # one-class cameras
    assert decode_images(df["image"].tolist()).shape == (len(df), 24, 24, 3)
    again = camera_frame(
        cameras=5, images_per_camera=40, size=24, seed=7, small_cameras=1, one_class_cameras=2
    )
    assert again.equals(df)
    other = camera_frame(
        cameras=5, images_per_camera=40, size=24, seed=8, small_cameras=1, one_class_cameras=2
    )
    assert not other["image"].equals(df["image"])
    with pytest.raises(ValueError, match="at least"):
        camera_frame(cameras=1, small_cameras=1, one_class_cameras=1)


def test_cameras_are_learnable_alone_and_confuse_one_global_model() -> None:
    """Logistic regression on pixels: clearly above chance per camera, and better per camera than one
    model over all cameras (a bike across the street sits in the partner camera's spot)."""
    from sklearn.linear_model import LogisticRegression

    df = camera_frame(cameras=8, images_per_camera=160, size=32, seed=0, small_cameras=0, one_class_cameras=0)
    x = decode_images(df["image"].tolist()).reshape(len(df), -1) / 255.0
    y = (df["label"] == "bike").to_numpy()
    cams = df["camera"].to_numpy()
    train = np.random.default_rng(0).random(len(df)) < 0.7
    pooled = LogisticRegression(C=0.1, max_iter=500).fit(x[train], y[train])
    alone, together = [], []
    for cam in np.unique(cams):
        tr, te = train & (cams == cam), ~train & (cams == cam)
        own = LogisticRegression(C=0.1, max_iter=500).fit(x[tr], y[tr])
        alone.append(own.score(x[te], y[te]))
        together.append(pooled.score(x[te], y[te]))
    assert min(alone) > 0.85
    assert np.median(alone) - np.median(together) >= 0.1
    assert all(a > t for a, t in zip(alone, together, strict=True))
