"""Image files -> RGB uint8 [H, W, 3] arrays, upright (EXIF orientation applied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskrt.errors import MaskrtError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _high_bit_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer holding 16-bit) samples -> uint8, rounding v * 255 / 65535."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb_array(img: object) -> np.ndarray:
    """A Pillow image of any mode -> RGB uint8 [H, W, 3] (alpha dropped, gray replicated)."""
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(img)
        if img.mode == "I" and gray.size and gray.max() <= 255:
            gray8 = gray.astype(np.uint8)  # an 8-bit image stored in 32-bit integers
        else:
            gray8 = _high_bit_depth_to_uint8(gray)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode == "F":
        gray8 = np.clip(np.asarray(img), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow's advice for palette images with transparency
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


# The largest image accepted (pixels): Pillow's own decompression-bomb limit, 89.5 MP, which an
# 8K frame (33 MP) passes and a 20000 x 20000 upload (400 MP, 1.2 GB decoded) does not.
MAX_IMAGE_PIXELS = 89_478_485


def _decode(source: object, what: str) -> np.ndarray:
    """Decode a file path or file object to RGB uint8 [H, W, 3], upright by its EXIF orientation;
    a one-line MaskrtError naming ``what`` for anything that is not a readable image."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:  # type: ignore[arg-type]
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise MaskrtError(
                        f"{what} is {img.width}x{img.height}: more than "
                        f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels"
                    )
                img.load()
                upright = ImageOps.exif_transpose(img)
                return to_rgb_array(upright if upright is not None else img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MaskrtError(f"cannot read {what}: {e}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MaskrtError(
            f"{what} is larger than {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels"
        ) from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` to RGB uint8 [H, W, 3], rotated upright by its EXIF orientation."""
    p = Path(path)
    if not p.is_file():
        raise MaskrtError(f"image {p} does not exist")
    return _decode(p, f"image {p}")


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ... bytes) as :func:`read_image` decodes a file."""
    import io

    if not data:
        raise MaskrtError(f"cannot read {what}: no bytes")
    return _decode(io.BytesIO(data), what)


def expand_image_paths(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders expand to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            )
            if not found:
                raise MaskrtError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise MaskrtError(f"image {p} does not exist")
    return paths


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether Pillow recognises ``path`` as an image (reads its header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
