"""Image bytes: what a format really is, checks against bombs, re-encoding without metadata.

Everything here is CPU work on bytes; callers run it in a thread.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from uuid import UUID

from PIL import Image, UnidentifiedImageError

from app.config import Settings
from app.services.providers.base import ReferenceImage
from app.services.storage.base import Storage

# Formats accepted, by what the bytes say, never by a header or a file name.
MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSION_BY_FORMAT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# Pillow's own bomb guard; uploads apply a tighter, configurable limit before decoding.
Image.MAX_IMAGE_PIXELS = 64_000_000


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


def _open(data: bytes, max_pixels: int) -> Image.Image:
    fmt = sniff(data)
    if fmt is None:
        raise NotAnImage("not a PNG, JPEG or WEBP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            if image.width * image.height > max_pixels:
                raise TooManyPixels(
                    f"{image.width}x{image.height} is more than {max_pixels} pixels"
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, TooManyPixels):
            raise
        raise NotAnImage(f"the image data is damaged ({exc})") from exc
    return image


def to_png(data: bytes, max_pixels: int = 64_000_000) -> Png:
    """Decode what a provider returned and hand back PNG bytes (as they are when already PNG)."""
    image = _open(data, max_pixels)
    if image.format == "PNG":
        return Png(data, image.width, image.height)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return Png(out.getvalue(), image.width, image.height)


def clean_upload(data: bytes, max_pixels: int) -> CleanImage:
    """Decode an upload and re-encode it in its own format, dropping EXIF and other metadata."""
    image = _open(data, max_pixels)
    fmt = image.format or "PNG"
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    # Saving without exif=/pnginfo=/icc_profile= writes no metadata at all.
    image.save(out, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    return CleanImage(out.getvalue(), fmt, image.width, image.height)


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
