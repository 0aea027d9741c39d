"""One icon as the files an app or a website takes: square PNGs at fixed sizes and an ICO.

CPU-bound Pillow work on bytes: callers run `render` on the imaging pool (`Decoders`).
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass

from PIL import Image

from app.services import imaging

PNG_SIZES = (16, 32, 64, 128, 256, 512)
# The sizes Windows and browsers pick from for a favicon or a file icon; 48 is not among the
# PNGs but is the size Windows shows most.
ICO_SIZES = (16, 32, 48, 64)
_NAME_LENGTH = 60


@dataclass(frozen=True)
class IconFiles:
    pngs: dict[int, bytes]  # size → PNG bytes, size x size pixels
    ico: bytes
    width: int  # of the original
    height: int


def _square(image: Image.Image) -> Image.Image:
    """The image centred on a transparent square canvas (an icon is square; none is cut)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def render(data: bytes) -> IconFiles:
    """Every file of one icon from its stored original (any size, any accepted format).

    Each size is resized from the next larger one (512 from the original, 256 from 512, …):
    halving with Lanczos keeps the quality and costs a fraction of resizing the original
    six times, and only two decoded sizes are alive at once."""
    pngs: dict[int, bytes] = {}
    ico = b""
    with imaging.open_image(data) as original:
        width, height = original.size
        rgba = original if original.mode == "RGBA" else original.convert("RGBA")
        current = _square(rgba)
        for size in sorted(PNG_SIZES, reverse=True):
            if current.size != (size, size):
                current = current.resize((size, size), Image.Resampling.LANCZOS)
            pngs[size] = _png(current)
            if size == max(ICO_SIZES):  # the smallest PNG large enough for every ICO size
                out = io.BytesIO()
                current.save(out, format="ICO", sizes=[(s, s) for s in ICO_SIZES])
                ico = out.getvalue()
    return IconFiles(dict(sorted(pngs.items())), ico, width, height)


def file_name(text: str | None, fallback: str) -> str:
    """A file-name-safe slug of `text` (ASCII letters, digits, hyphens), else `fallback`."""
    folded = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:_NAME_LENGTH].rstrip("-")
    return slug or fallback


class Names:
    """Unique names within one archive: `rocket`, `rocket-2`, …"""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self._taken:
            n += 1
            name = f"{wanted}-{n}"
        self._taken.add(name)
        return name
