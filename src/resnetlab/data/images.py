"""Reading image files into uint8 tensors, and the evaluation preprocessing.

Decoding goes through ``torchvision.io`` (libjpeg-turbo, no PIL object per image) except for
PNG and WebP, which Pillow decodes. PNG: torchvision's libpng decoder kills the process
(SIGSEGV) on corrupt PNG data instead of raising (pytorch/vision#3613; 199 of 200 randomly
corrupted PNGs did with torchvision 0.29, and Pillow decodes a PNG as fast). WebP: torchvision's
decoder ignores its EXIF orientation. Every image is turned upright by its EXIF orientation.
Formats torchvision cannot decode (BMP, TIFF, ...) fall back to Pillow too. Both raise on
truncated or corrupt files, which callers turn into "skipped" entries instead of crashes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Sequence

import torch

from resnetlab.errors import DataError


def png_path(path: str | os.PathLike) -> Path:
    """Where a figure saved to ``path`` lands: matplotlib adds ``.png`` to a name without a suffix."""
    p = Path(path)
    return p if p.suffix else p.with_name(p.name + ".png")


def unused_png_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """:func:`png_path`, refused (one line) when a file is already there, unless ``overwrite``:
    a figure command never replaces an earlier figure without being asked. A folder is refused
    too: the figure went beside it, as ``FOLDER.png``, not into it."""
    from resnetlab.errors import ResnetlabError

    if Path(path).is_dir():
        raise ResnetlabError(f"--out {path} is a folder; give the figure's file name (e.g. {Path(path) / 'figure.png'})")
    p = png_path(path)
    if os.path.lexists(p) and not overwrite:
        raise ResnetlabError(f"{p} already exists; use --overwrite to replace it, or another --out")
    return p

log = logging.getLogger(__name__)

# Bumped whenever a change here gives other pixels for the same file (the image cache of a
# streamed folder is keyed on it, with the Pillow and torchvision versions): 2 = mode I as 16 bits,
# 3 = EXIF orientation applied, float images (mode F) within 0..2 read as 0..1.
DECODER_VERSION = 3

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def image_mode(path: str | os.PathLike) -> str:
    """The Pillow mode of an image file from its header only (cheap; raises if not an image)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.mode


def is_gray_mode(mode: str) -> bool:
    """True for Pillow modes that carry one intensity channel (with or without alpha)."""
    return mode in _GRAY_MODES


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode(path: str, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    with open(path, "rb") as f:
        head = f.read(16)
    # by content, not by name: Pillow decodes PNG (module docstring) and WebP (torchvision's
    # decoder does not apply a WebP's EXIF orientation)
    if not (head[:8] == _PNG_SIGNATURE or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            # EXIF orientation applied: a phone photo stored sideways (Orientation=6) is seen upright,
            # as every photo viewer shows it (torchvision's ImageFolder would see it sideways)
            return _as_chw_uint8(decode_image(read_file(path), mode=mode, apply_exif_orientation=True), channels)
        except RuntimeError:
            pass  # not a format torchvision decodes (or broken): let Pillow try, it raises if broken
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()  # raises OSError on truncated data
        try:
            im = ImageOps.exif_transpose(im)  # as torchvision's path above (a copy when it turns nothing)
        except Exception:  # malformed EXIF ("not a TIFF file"): the pixels as stored, as before orientation was read
            pass
        if im.mode == "F":
            # 32-bit float (a float TIFF): convert("L") clipped values of 0..1 to black. An image
            # whose values stay within 0..2 is taken as 0..1 (the float image convention; a little
            # overshoot is clipped: a threshold at 1 turned a 0..1 image with one pixel at 1.02
            # black), one within 0..255 as bytes, a larger one is scaled from its maximum; NaN is black.
            a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            top = float(a.max()) if a.size else 0.0
            scale = 255.0 if top <= 2.0 else 1.0 if top <= 255.0 else 255.0 / top
            im = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")
        elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit gray: Pillow's convert("L") clips to 255 instead of scaling. Mode "I" holds
            # 16-bit data too (a 16-bit PGM; a 16-bit PNG before Pillow 10.3), so it is scaled from
            # 0..65535 as well: stretching each image to its own maximum turned a dark image white
            # and decoded the same pixels by format and Pillow version. Only values beyond 16 bits
            # (a 32-bit TIFF) are scaled from the image's maximum.
            a = np.asarray(im).astype(np.float64)
            top = max(65535.0, float(a.max()))
            im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
        im = im.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _as_chw_uint8(img: torch.Tensor, channels: int) -> torch.Tensor:
    """What torchvision's decoder returned, as one uint8 (C, H, W) image with ``channels``: the
    first frame of an animated GIF (as Pillow shows it; the GIF decoder ignores the read mode),
    16-bit PNGs scaled to 8 bits."""
    from torchvision.transforms.v2 import functional as F

    if img.ndim == 4:
        img = img[0]
    if img.ndim != 3:
        raise RuntimeError(f"decoded image has shape {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        img = F.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] != channels:
        img = F.rgb_to_grayscale(img[:3]) if channels == 1 else img[:1].expand(3, -1, -1).contiguous()
    return img


def resize_cover(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize (antialiased) so the image covers ``size`` and center-crop to it; aspect is kept.

    Args:
        img: uint8 ``(C, H, W)`` or ``(B, C, H, W)``.
        size: an int (square) or ``(h, w)``.

    Example:
        >>> resize_cover(torch.zeros(3, 40, 80, dtype=torch.uint8), 32).shape
        torch.Size([3, 32, 32])
    """
    from torchvision.transforms.v2 import functional as F

    th, tw = _hw(size)
    h, w = img.shape[-2:]
    if (h, w) == (th, tw):
        return img
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    img = F.resize(img, [nh, nw], antialias=True)
    return F.center_crop(img, [th, tw])


def read_image(path: str | os.PathLike, channels: int = 3, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Decode one image file to uint8 ``(channels, H, W)``, optionally resized to cover ``size``.

    Grayscale, palette, RGBA and CMYK files are converted to ``channels`` (1 or 3).

    Raises:
        RuntimeError / OSError: the file is not a readable image (corrupt, truncated, empty).

    Example:
        >>> read_image("cat.jpg", channels=3, size=224).shape  # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r} is not supported (allowed: 1, 3)")
    img = _decode(os.fspath(path), channels)
    return resize_cover(img, size) if size is not None else img


def load_images(paths: Sequence[str | os.PathLike], size: int | Sequence[int], channels: int = 3) -> torch.Tensor:
    """Load image files for prediction as one uint8 batch ``(N, channels, h, w)``.

    Each image is resized to cover ``size`` and center-cropped (the same geometry the image-folder
    datasets use). Files whose channel count differs from ``channels`` are converted with a logged
    notice (e.g. a grayscale photo fed to an RGB model).

    Args:
        paths: image files.
        size: the model's input ``(h, w)`` or an int for a square.
        channels: 1 (grayscale) or 3 (RGB).

    Raises:
        DataError: a file that is missing or not a readable image (names it).

    Example:
        >>> x = load_images(["a.png", "b.jpg"], size=32, channels=3)  # doctest: +SKIP
        >>> preprocess(x, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]).shape  # doctest: +SKIP
        torch.Size([2, 3, 32, 32])
    """
    out = []
    converted: dict[str, int] = {}  # source mode -> files converted: one log line, not one per file
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            raise DataError(f"{p!r} is a folder; give an image file")
        if not os.path.isfile(p):
            raise DataError(f"image file {p!r} does not exist")
        try:
            mode = image_mode(p)
            img = read_image(p, channels=channels, size=size)
        except Exception as exc:  # OSError, RuntimeError, ValueError, PIL's DecompressionBombError (an Exception) ...
            raise DataError(f"cannot read image {p!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        src = 1 if is_gray_mode(mode) else (3 if mode in ("RGB", "YCbCr", "P") else None)
        if src != channels:
            converted[mode] = converted.get(mode, 0) + 1
        out.append(img)
    if converted:
        log.info("converted %d image(s) to %d channel(s) (%s)", sum(converted.values()), channels,
                 ", ".join(f"{m}: {k}" for m, k in sorted(converted.items())))  # fmt: skip
    if not out:
        raise DataError("no image files given")
    return torch.stack(out)


def preprocess(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """Evaluation preprocessing: uint8 ``(B, C, H, W)`` -> normalized float batch.

    Args:
        images: uint8 batch (or float in [0, 1]).
        mean, std: per-channel statistics in [0, 1] units (from the training split).
        device, dtype: where and in what precision the result lives.
        channels_last: return NHWC memory format (faster convolutions).

    Example:
        >>> preprocess(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), [0.5], [0.5]).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if images.ndim != 4:
        raise DataError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise DataError(f"mean/std have {len(mean)}/{len(std)} values but the images have {c} channels")
    x = images.to(device=device) if device is not None else images
    # a float batch already on the device would come back as the caller's own tensor: copy it,
    # since the normalization below works in place
    x = x.to(torch.float32, copy=x.data_ptr() == images.data_ptr())
    if images.dtype == torch.uint8:
        x = x.div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device).view(1, c, 1, 1)
    x = x.sub_(m).div_(s).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
