"""Image bytes: what a format really is, checks against bombs, re-encoding without metadata.

Everything here is CPU work on bytes; callers run it on `Decoders`, a small pool of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import io
import logging
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar
from uuid import UUID

from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from app.config import Settings
from app.services.providers.base import ReferenceImage
from app.services.storage.base import Storage

# Formats accepted, by what the bytes say, never by a header or a file name.
MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSION_BY_FORMAT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# Pillow's own bomb guard; uploads apply a tighter, configurable limit before decoding.
Image.MAX_IMAGE_PIXELS = 64_000_000
# What a provider's answer may be: generous (models answer up to 4K), still bounded.
PROVIDER_MAX_SIDE = 8192
# A decode at least this large is followed by malloc_trim (see Decoders).
TRIM_AFTER_PIXELS = 2_000_000

log = logging.getLogger("atelier.imaging")
P = ParamSpec("P")
T = TypeVar("T")


class NotAnImage(ValueError):
    pass


class TooManyPixels(ValueError):
    pass


@dataclass(frozen=True)
class Png:
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    format: str
    width: int
    height: int

    @property
    def mime_type(self) -> str:
        return MIME_BY_FORMAT[self.format]

    @property
    def extension(self) -> str:
        return EXTENSION_BY_FORMAT[self.format]


def sniff(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(data: bytes, max_pixels: int, max_side: int) -> Image.Image:
    """Decode `data`, refusing from its header alone (Image.open reads no pixel data) an
    image over `max_side` on either side or over `max_pixels` in all."""
    fmt = sniff(data)
    if fmt is None:
        raise NotAnImage("not a PNG, JPEG or WEBP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width > max_side or height > max_side:
                image.close()
                raise TooManyPixels(
                    f"{width}x{height} pixels is more than {max_side} pixels on a side"
                )
            if width * height > max_pixels:
                image.close()
                raise TooManyPixels(f"{width}x{height} is more than {max_pixels} pixels")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, TooManyPixels):
            raise
        raise NotAnImage(f"the image data is damaged ({exc})") from exc
    return image


def open_image(
    data: bytes, max_pixels: int = 64_000_000, max_side: int = PROVIDER_MAX_SIDE
) -> Image.Image:
    """Decode stored image bytes with the same checks as a provider's answer (the caller
    closes the image)."""
    return _open(data, max_pixels, max_side)


def to_png(data: bytes, max_pixels: int = 64_000_000, max_side: int = PROVIDER_MAX_SIDE) -> Png:
    """Decode what a provider returned and hand back PNG bytes (as they are when already PNG)."""
    with _open(data, max_pixels, max_side) as image:
        if image.format == "PNG":
            return Png(data, image.width, image.height)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return Png(out.getvalue(), image.width, image.height)


def clean_upload(data: bytes, max_pixels: int, max_side: int) -> CleanImage:
    """Decode an upload and re-encode it in its own format, dropping EXIF and other metadata
    (and anything appended after the image data: only the decoded pixels are written).

    What the metadata meant for the pixels is applied first: a camera's EXIF Orientation
    (a portrait photo is stored upright, not on its side) and an RGB or CMYK ICC profile
    (the colours converted to sRGB, which every viewer assumes of an image without one).
    A profile or an EXIF block that cannot be read is ignored, as it was before."""
    with _open(data, max_pixels, max_side) as decoded:
        fmt = decoded.format or "PNG"
        profile = decoded.info.get("icc_profile")
        method = _TRANSPOSE.get(_orientation(decoded))
        steps = _Steps(decoded)
        try:
            if method is not None:
                steps.then(steps.image.transpose(method))
            if steps.image.mode == "CMYK" and profile:
                to_rgb = _srgb(profile, "CMYK", "RGB")
                steps.then(ImageCms.applyTransform(steps.image, to_rgb) if to_rgb else None)
                profile = None  # applied, or not usable
            image = steps.image
            if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                steps.then(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
            if fmt == "JPEG" and steps.image.mode not in ("RGB", "L"):
                steps.then(steps.image.convert("RGB"))
            image = steps.image
            if profile and image.mode in ("RGB", "RGBA"):
                in_place = _srgb(profile, image.mode, image.mode)
                if in_place is not None:
                    with contextlib.suppress(ImageCms.PyCMSError):  # left as they were
                        ImageCms.applyTransform(image, in_place, inPlace=True)
            # Encoders copy some of `info` into the file (JPEG its COM comment, WEBP and JPEG
            # an ICC profile): keep only what the pixels need (a palette's transparency).
            image.info = {k: v for k, v in image.info.items() if k == "transparency"}
            out = io.BytesIO()
            # Saving without exif=/pnginfo=/icc_profile= and that info writes no metadata.
            image.save(out, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
            return CleanImage(out.getvalue(), fmt, image.width, image.height)
        finally:
            steps.close()


_ORIENTATION = ExifTags.Base.Orientation
# EXIF Orientation → the transposition that shows the pixels as the camera meant them (as
# Pillow's ImageOps.exif_transpose maps it; done here without its rewriting of the EXIF,
# which raises on a corrupt block, and which is stripped anyway).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation, 1 (as stored) when there is none or it cannot be read."""
    try:
        with warnings.catch_warnings():  # a damaged block's, as _open keeps Pillow's quiet
            warnings.simplefilter("ignore", UserWarning)
            value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block raises what its parser meets
        return 1
    return value if isinstance(value, int) else 1


def _srgb(profile: bytes, mode_in: str, mode_out: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from `profile` to sRGB; None when the profile cannot be read or is not
    one of `mode_in`'s colour space (a broken one is the sender's loss, not a refusal)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.buildTransform(source, _SRGB, mode_in, mode_out)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


class _Steps:
    """The image as each step leaves it. The one a step replaces is closed at once, the
    decoded one included (its `with` closes it again, harmlessly), so an upload (up to
    MAX_UPLOAD_PIXELS) is held at most twice at a time."""

    def __init__(self, decoded: Image.Image) -> None:
        self.image = decoded

    def then(self, image: Image.Image | None) -> None:
        if image is None or image is self.image:
            return
        self.image.close()
        self.image = image

    def close(self) -> None:
        self.image.close()


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Decoders:
    """The process's bounded pool for CPU-bound imaging (decode, re-encode), kept apart from
    the default executor so a burst of large images queues here instead of stalling the
    storage and token work that shares the default pool.

    A decode's pixel blocks are mapped and unmapped by glibc, but the smaller buffers around
    them (encoder state, rows, the output) stay free in the decoding thread's heap arena
    after the image is gone. After a large image, `malloc_trim(0)` hands those pages back
    (bench/upload_bombs: 175 MiB two seconds after a burst of 12 without it, 125 with it);
    it walks every arena, so it runs only then."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imaging")
        self._trim = _load_malloc_trim()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self._call, fn, *args, **kwargs)
        )

    def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        result = fn(*args, **kwargs)
        # Png and CleanImage say how large the decoded image was; a refused one never was.
        pixels = getattr(result, "width", 0) * getattr(result, "height", 0)
        if self._trim is not None and pixels >= TRIM_AFTER_PIXELS:
            self._trim(0)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def load_reference(storage: Storage, key: str) -> ReferenceImage:
    data = await storage.get(key)
    fmt = sniff(data) or "PNG"
    return ReferenceImage(data=data, mime_type=MIME_BY_FORMAT.get(fmt, "image/png"))


def full_prompt(prompt: str, style_prompt: str | None) -> str:
    if not style_prompt:
        return prompt
    return f"{prompt}\n\nKeep the look of this set: {style_prompt}"


def canonical_url(settings: Settings, key: str, image_id: UUID) -> str:
    """What goes in generated_images.image_url, the column the mobile app reads.

    With R2 and a public domain it is the object's public URL (as the app stores itself);
    otherwise a stable API address that redirects to a fresh short-lived URL.
    """
    if settings.storage == "r2" and settings.r2_public_base_url:
        return f"{settings.r2_public_base_url.rstrip('/')}/{key}"
    return f"{settings.public_base_url.rstrip('/')}/v1/images/{image_id}/download"
