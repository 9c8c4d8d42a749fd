"""Image decoding: EXIF orientation, grayscale, RGBA, palette, 16-bit, unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrt.errors import MaskrtError
from maskrt.runtime.images import expand_image_paths, read_image


def _gradient(h: int = 12, w: int = 20) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 12, y * 20, (x + y) * 7], axis=2).astype(np.uint8)


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize(
    "orientation, transform",
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated: displayed turned 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, transform) -> None:
    rgb = _gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation
    # PNG keeps the pixels exactly (JPEG would blur the comparison) and carries EXIF too.
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    out = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, transform(rgb))


def test_grayscale_rgba_and_palette(tmp_path: Path) -> None:
    gray = _gradient()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.concatenate([_gradient(), np.full((12, 20, 1), 77, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[:, :, :3])

    pal = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)


def test_sixteen_bit_png(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535], [32896, 1000, 40000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")  # mode I;16
    out = read_image(tmp_path / "d.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.shape == (2, 3, 3) and np.all(out[:, :, 0] == out[:, :, 2])


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    with pytest.raises(MaskrtError, match="cannot read image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(MaskrtError, match="does not exist"):
        read_image(tmp_path / "none.png")


def test_folder_expansion(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in expand_image_paths([tmp_path])] == ["a.JPG", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskrtError, match="holds no images"):
        expand_image_paths([tmp_path / "empty"])
