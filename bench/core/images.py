"""Reading the few concept images a method learns from: one guarded loader, clear errors.

Every image the benchmark reads goes through ``read_image``: a size limit checked from the header
before any pixel is decoded (decompression bombs), EXIF orientation applied, odd modes (grey,
RGBA, palette, CMYK, 16-bit, float) converted to 8-bit RGB, animated files reduced to their first
frame (and said so), and anything else unreadable reported as one line naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bench.core.errors import InputError, shown

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# What PIL may decode them as, whatever the suffix says (a .jpg that is a PNG is common); PIL would
# otherwise sniff any format it knows, such as EPS, which it renders by running Ghostscript
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # JPEG: MPO (multi-picture) too
MAX_PIXELS = 100_000_000  # a 100-megapixel photo is the largest a few-shot image may be
# libjpeg decodes every scan of a progressive JPEG over the whole image: a few KB of empty scans at 100
# megapixels take minutes. Encoders write about 10 (mozjpeg's searched scripts a few more)
MAX_JPEG_SCANS = 100
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit and 32-bit grey are scaled into 0..255 (a plain convert would clip them)."""
    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if im.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255.0 or im.mode.startswith("I;16"):
            arr = arr / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def read_image(path: str | os.PathLike) -> tuple[Image.Image, list[str]]:
    """One image as 8-bit RGB, plus notes on what was done to it (first frame of an animation).

    Raises ``InputError`` naming the file for anything unreadable, oversized or truncated.
    """
    path = Path(path)
    name = shown(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit governs
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise InputError(f"cannot read image {name}: it has no pixels ({w}x{h})")
                if w * h > MAX_PIXELS:
                    raise InputError(f"cannot read image {name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, "
                                     f"over the {MAX_PIXELS / 1e6:.0f}-megapixel limit (decompression bomb?)")
                if im.format in ("JPEG", "MPO"):  # count start-of-scan markers (never inside entropy-coded data)
                    scans = path.read_bytes().count(b"\xff\xda")
                    if scans > MAX_JPEG_SCANS:
                        raise InputError(f"cannot read image {name}: a JPEG of {scans:,} scans, over the "
                                         f"{MAX_JPEG_SCANS} a decoder is given (a crafted file?); re-save it")
                frames = int(getattr(im, "n_frames", 1) or 1)
                if frames > 1:
                    im.seek(0)
                    notes.append(f"{name}: animated image with {frames} frames; only the first frame is used")
                im.load()
                im = ImageOps.exif_transpose(im) or im
                rgb = _to_rgb(im)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {name}: too many pixels (decompression bomb?): {e}") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {name}: not a PNG, JPEG, WebP, BMP or GIF file (or a damaged one); "
                         "convert it to PNG") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        raise InputError(f"cannot read image {name}: {' '.join(str(e).split()) or type(e).__name__}") from None
    return rgb, notes


def load_images(folder: str | os.PathLike, notes: list[str] | None = None) -> list[Image.Image]:
    """All images in ``folder`` (sorted by name, RGB). Errors name the folder or file.

    ``notes``, when given, receives one line per image that was changed beyond a mode
    conversion (an animated file's first frame).
    """
    folder = Path(folder)
    name = shown(folder)
    try:
        if not folder.is_dir():
            raise InputError(f"image folder not found: {name}")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:  # a name too long, a folder not readable
        raise InputError(f"cannot read image folder {name}: {e.strerror or e}") from None
    if not files:
        raise InputError(f"image folder {name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for path in files:
        image, said = read_image(path)
        images.append(image)
        if notes is not None:
            notes.extend(said)
    return images
