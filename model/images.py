"""Reading images: any file PIL can open, as 8-bit RGB, brought to one size for a batch.

High bit-depth images are scaled, not clipped: a 16-bit PNG's 0..65535 becomes
0..255 (PIL's own conversion would clip everything above 255 to white).
Images of different sizes are each resized to the backbone's square side, as
:meth:`model.backbone.Backbone.preprocess` would resize a single image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: PIL modes of more than 8 bits per channel -> the value that maps to 255
_SIXTEEN_BIT = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8; a clear error for an unreadable file.

    16-bit greyscale is scaled by 255/65535; 32-bit integer images are read
    as 16-bit when any value exceeds 255; floating-point images as [0, 1]
    when their maximum is at most 1, else as [0, 255] (clipped).
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
                return _grey_to_rgb8(np.asarray(img), img.mode)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"unreadable image ({type(exc).__name__})") from None


def _grey_to_rgb8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode in _SIXTEEN_BIT or (mode == "I" and values.max(initial=0) > 255):
        values = values * (255 / 65535)
    elif mode == "F" and np.nanmax(values, initial=0) <= 1:
        values = values * 255
    grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def native_size(path: str | Path) -> int:
    """The longer side of an image, read from its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"unreadable image ({type(exc).__name__})") from None
    return max(w, h)


def image_batch(paths: list[Path], side: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W): uint8 when all share one size, else float in [0, 1] at ``side`` x ``side``.

    Without ``side``, images of different sizes are an error. With it, each
    image is resized exactly as the backbone's preprocessing resizes one
    (bicubic, antialiased, to a square), so a folder of mixed sizes gives the
    same input as the same images passed one by one.
    """
    arrays = [read_image(p) for p in paths]
    first = arrays[0].shape
    if all(a.shape == first for a in arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if side is None:
        i = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise InputError(paths[i], f"image size {arrays[i].shape[:2]} differs from {first[:2]} of {paths[0].name}")
    return torch.cat([to_side(torch.tensor(a).permute(2, 0, 1)[None], side) for a in arrays])


def to_side(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 or [0, 1] images (B, 3, H, W) -> float [0, 1] at ``side`` x ``side`` (bicubic, antialiased)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return x


def list_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (by suffix), sorted by name; an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise InputError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths
