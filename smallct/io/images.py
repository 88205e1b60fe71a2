"""Images: turn messy picture files into clean RGB uint8 arrays of shape (H, W, 3), and into model inputs.

Pure functions on arrays; the only I/O is opening a path with Pillow. :func:`preprocess` is the whole
path of a picture to a training or prediction input: RGB uint8, black border cropped, square.

Conventions (documented once, here):

* Alpha is composited on **black**: ``rgb * alpha``. CT screenshots have a black background,
  so a transparent pixel is background.
* Integer images are scaled by their dtype's range: uint8 as is, bool to 0/255,
  uint16 (and 16-bit PNG modes) by 255/65535. Other integer dtypes must hold values in 0..255
  (taken as is) or 0..65535 (scaled like uint16); negative values are refused, since they are
  not display values (CT data in Hounsfield units must be windowed first, see ``smallct.io.dicom``).
* Float images are taken as 0..1 when every value is in [0, 1] (as matplotlib reads PNGs) and
  scaled by 255; as 0..255 when every value is in [0, 255]; anything else is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image

MAX_SIDE = 4096  # pixels; larger is not a CT slice (a CT slice is 512 px, screenshots about 1000)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def _name(image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    if isinstance(image, Image.Image):
        return f"PIL image of mode {image.mode} and size {image.size}"
    return f"object of type {type(image).__name__}"


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; ``ValueError`` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        image = Image.open(path)
        if max(image.size) > MAX_SIDE:
            raise ValueError(f"{path}: image of {image.size[0]}x{image.size[1]} px is too large to be a "
                             f"CT slice (limit {MAX_SIDE} px per side)")
        image.load()
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None
    return image


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(image)
    if mode == "P":
        return np.asarray(image.convert("RGBA"))
    if mode == "PA":
        return np.asarray(image.convert("RGBA"))
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        return np.asarray(image).astype(np.int64)
    if mode == "F":
        return np.asarray(image).astype(np.float32)
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: Pillow knows the conversion to RGB.
    return np.asarray(image.convert("RGB"))


def _to_uint8_values(arr: np.ndarray, name: str) -> np.ndarray:
    """Scale values to 0..255 uint8 by the dtype conventions in the module docstring."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.round(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(arr).astype(np.uint8)
        raise ValueError(f"{name}: float values {lo:g}..{hi:g} are neither in 0..1 nor in 0..255")
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"{name}: negative values ({lo}) are not display values; window CT data "
                             "first (smallct.io.windows.window)")
        if arr.dtype == np.uint16 or hi > 255:
            if hi > 65535:
                raise ValueError(f"{name}: integer values up to {hi} exceed the 16-bit range")
            return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return arr.astype(np.uint8)
    raise ValueError(f"{name}: unsupported dtype {arr.dtype}")


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Normalise an image to an RGB uint8 array of shape (H, W, 3).

    Parameters
    ----------
    image
        A path (str or Path), a PIL image of any mode, or a numpy array: (H, W), or
        (H, W, C) with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
        See the module docstring for dtype scaling; alpha is composited on black.

    Returns
    -------
    numpy.ndarray
        uint8, shape (H, W, 3).

    Raises
    ------
    ValueError
        Naming the input and the problem: unreadable or truncated file, NaN, empty array,
        unsupported channel count or dtype, an image larger than ``MAX_SIDE`` pixels per side.
    """
    name = _name(image)
    if isinstance(image, (str, Path)):
        arr = _pil_to_array(open_image(image))
    elif isinstance(image, Image.Image):
        if max(image.size) > MAX_SIDE:
            raise ValueError(f"{name}: too large to be a CT slice (limit {MAX_SIDE} px per side)")
        arr = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise ValueError(f"{name}: expected a path, a PIL image or a numpy array")

    if arr.size == 0:
        raise ValueError(f"{name}: empty image")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected 2-D (H, W) or 3-D (H, W, C), got {arr.ndim}-D")
    if arr.ndim == 3 and arr.shape[2] not in (2, 3, 4):
        hint = ""
        if arr.shape[0] in (1, 3, 4):
            hint = "; for channels-first data use a.transpose(1, 2, 0)"
        raise ValueError(f"{name}: {arr.shape[2]} channels (expected 1, 2, 3 or 4 channels last){hint}")
    if max(arr.shape[:2]) > MAX_SIDE:
        raise ValueError(f"{name}: too large to be a CT slice (limit {MAX_SIDE} px per side)")

    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha = arr[:, :, -1]
        arr = arr[:, :, 0] if arr.shape[2] == 2 else arr[:, :, :3]
    rgb = _to_uint8_values(np.ascontiguousarray(arr), name)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if alpha is not None:
        a = _to_uint8_values(np.ascontiguousarray(alpha), name + " (alpha)").astype(np.uint16)
        rgb = ((rgb.astype(np.uint16) * a[:, :, None] + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def crop_to_content(rgb: np.ndarray, threshold: int = 10, margin: int = 2) -> np.ndarray:
    """Crop the dark border around the head: the bounding box of pixels brighter than ``threshold``.

    Returns the input unchanged when nothing is brighter (a blank image stays blank).
    """
    # channel by channel: numpy reduces a short last axis about 20x slower than this
    return crop_to_mask(rgb, np.maximum(np.maximum(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2]) > threshold, margin)


def crop_to_mask(image: np.ndarray, mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """``image`` (H, W, ...) cut to the bounding box of the true pixels of ``mask`` (H, W), ``margin`` px wider
    on each side (inside the image); unchanged when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return image
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, image.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, image.shape[1])
    return image[r0:r1, c0:c1]


def resize_rgb(rgb: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3).

    ``pad`` keeps the aspect ratio (longer side to ``size``, centred on black);
    ``squash`` stretches to the square. Both use bilinear filtering with antialiasing.
    """
    image = Image.fromarray(rgb)
    if mode == "squash":
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    if mode != "pad":
        raise ValueError(f"resize mode {mode!r}: expected 'pad' or 'squash'")
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(image.resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def preprocess(image: Any, size: int, resize: str = "pad", crop: bool = True) -> np.ndarray:
    """The whole path of a picture to a model input, for training and prediction alike: RGB uint8
    (:func:`to_rgb_uint8`), the dark border cropped (:func:`crop_to_content`), resized to (size, size, 3)
    (:func:`resize_rgb`)."""
    rgb = to_rgb_uint8(image)
    if crop:
        rgb = crop_to_content(rgb)
    return resize_rgb(rgb, size, resize)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def describe_image(path: str | Path) -> dict:
    """One row of :func:`smallct.datasets.explore.describe` for one file: mode, size, channels, dtype, value range."""
    image = open_image(path)
    arr = np.asarray(image)
    return {
        "file": Path(path).name,
        "mode": image.mode,
        "width": image.size[0],
        "height": image.size[1],
        "channels": 1 if arr.ndim == 2 else arr.shape[2],
        "dtype": str(arr.dtype),
        "min": arr.min().item(),
        "max": arr.max().item(),
        "bytes": Path(path).stat().st_size,
    }
