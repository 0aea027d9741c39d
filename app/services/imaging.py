"""Image bytes: what a format really is, checks against bombs, re-encoding without metadata.

Everything here is CPU work on bytes; callers run it on `Decoders`, a small pool of its own.
"""

from __future__ import annotations

import asyncio
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

from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

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
    (a portrait photo is stored upright, not on its side) and an ICC profile (the colours
    converted to sRGB, which every viewer assumes of an image without one)."""
    with _open(data, max_pixels, max_side) as decoded:
        fmt = decoded.format or "PNG"
        steps = _Steps(decoded)
        if decoded.getexif().get(_ORIENTATION, 1) != 1:
            steps.then(ImageOps.exif_transpose(decoded))
        if steps.image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            steps.then(steps.image.convert("RGBA" if "A" in steps.image.getbands() else "RGB"))
        if fmt == "JPEG" and steps.image.mode not in ("RGB", "L"):
            steps.then(steps.image.convert("RGB"))
        profile = decoded.info.get("icc_profile")
        if profile and steps.image.mode in ("RGB", "RGBA"):
            steps.then(_to_srgb(steps.image, profile))
        image = steps.image
        # Encoders copy some of `info` into the file (JPEG its COM comment, WEBP and JPEG an
        # ICC profile): keep only what the pixels need (a palette's transparency).
        image.info = {k: v for k, v in image.info.items() if k == "transparency"}
        out = io.BytesIO()
        # Saving without exif=/pnginfo=/icc_profile= and that info writes no metadata at all.
        image.save(out, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
        steps.close()
        return CleanImage(out.getvalue(), fmt, image.width, image.height)


_ORIENTATION = ExifTags.Base.Orientation
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class _Steps:
    """The image as each step leaves it; each one it replaced is closed at once (an upload
    may be 64 MP: two copies at most at a time), all but the decoded one (its `with`)."""

    def __init__(self, decoded: Image.Image) -> None:
        self._decoded = decoded
        self.image = decoded

    def then(self, image: Image.Image) -> None:
        if image is not self.image and self.image is not self._decoded:
            self.image.close()
        self.image = image

    def close(self) -> None:
        if self.image is not self._decoded:
            self.image.close()


def _to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    """`image`'s pixels converted from `profile` to sRGB; as they are when the profile
    cannot be read (a broken one is the sender's loss, not a refusal)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return converted if converted is not None else image


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
