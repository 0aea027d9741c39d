"""THE LOCAL PROVIDER IS A DEVELOPMENT TOOL, NOT AN IMAGE MODEL.

It draws a deterministic picture with Pillow, offline: a gradient and a few shapes seeded
from the prompt, the kind and the reference images, with "LOCAL PROVIDER - offline dev
image" written across it and a PNG text chunk `atelier-provider: local (offline dev tool)`.
Its model name is `local-dev`. The same request always gives the same bytes.

Two settings make it useful for demos and tests through the real service:
`LOCAL_PROVIDER_DELAY_MS` (each image takes that long, so progress can be watched and jobs
can be caught in flight) and `LOCAL_PROVIDER_FAIL_RATE` (the share of calls that fail as an
unavailable provider would, retryable). The settings refuse it when ENV=production.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import random
from collections.abc import Awaitable, Callable

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from app.config import Settings
from app.core.executors import BlockingPool
from app.services.providers.base import ImageRequest, ImageResult, ProviderUnavailable

Sleep = Callable[[float], Awaitable[None]]

MODEL = "local-dev"
SIZE = 512
LABEL = "LOCAL PROVIDER - offline dev image"
PNG_TEXT_KEY = "atelier-provider"
PNG_TEXT_VALUE = "local (offline dev tool)"


class LocalProvider:
    name = "local"

    def __init__(
        self,
        *,
        delay_ms: int = 0,
        fail_rate: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        render_workers: int = 2,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate is a probability, between 0 and 1")
        self.delay_ms = delay_ms
        self.fail_rate = fail_rate
        self._sleep = sleep
        self._rng = rng
        # Rendering is CPU-bound: a few threads of its own (IMAGING_WORKERS), not the default
        # pool, so 1,000 jobs in flight queue here instead of crowding out storage and tokens.
        self._renderers = BlockingPool(render_workers, "local-render")

    @classmethod
    def from_settings(cls, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> LocalProvider:
        return cls(
            delay_ms=settings.local_provider_delay_ms,
            fail_rate=settings.local_provider_fail_rate,
            sleep=sleep,
            render_workers=settings.imaging_workers,
        )

    def model_for(self, request: ImageRequest) -> str:
        return MODEL

    async def aclose(self) -> None:
        self._renderers.close()

    async def generate(self, request: ImageRequest) -> ImageResult:
        if self.delay_ms:
            await self._sleep(self.delay_ms / 1000)
        if self.fail_rate:
            rng = self._rng or random.Random(os.urandom(16))
            if rng.random() < self.fail_rate:
                raise ProviderUnavailable("local provider: simulated failure")
        data = await self._renderers.run(render, request)
        return ImageResult(data=data, mime_type="image/png", model=MODEL)


def request_seed(request: ImageRequest) -> bytes:
    digest = hashlib.sha256()
    for piece in (request.kind.encode(), request.prompt.encode()):
        digest.update(len(piece).to_bytes(8, "big") + piece)
    for reference in request.references:
        digest.update(hashlib.sha256(reference.data).digest())
    return digest.digest()


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType: the small bitmap font
        return ImageFont.load_default()


def render(request: ImageRequest) -> bytes:
    """The PNG for `request`: blocking Pillow work, run it in a thread."""
    seed = request_seed(request)
    rng = random.Random(seed)
    top = (seed[0], seed[1], seed[2])
    bottom = (seed[3], seed[4], seed[5])
    column = Image.new("RGB", (1, SIZE))
    column.putdata(
        [
            tuple(round(a + (b - a) * y / (SIZE - 1)) for a, b in zip(top, bottom, strict=True))
            for y in range(SIZE)
        ]
    )
    image = column.resize((SIZE, SIZE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(3 + seed[6] % 4):
        x0, y0 = rng.randrange(0, SIZE - 64), rng.randrange(0, SIZE - 64)
        x1, y1 = x0 + rng.randrange(48, 200), y0 + rng.randrange(48, 200)
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x1, y1], fill=fill, outline=(255, 255, 255), width=3)
    if request.references:
        _paste_reference(image, request.references[0].data)
    draw.rectangle([0, SIZE - 72, SIZE, SIZE], fill=(0, 0, 0))
    draw.text((16, SIZE - 64), LABEL, fill=(255, 255, 0), font=_font(24))
    draw.text((16, SIZE - 30), f"kind: {request.kind}", fill=(255, 255, 255), font=_font(18))
    info = PngInfo()
    info.add_text(PNG_TEXT_KEY, PNG_TEXT_VALUE)
    info.add_text("atelier-seed", seed.hex())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, compress_level=1)  # fast; a dev image
    return buffer.getvalue()


def _paste_reference(image: Image.Image, data: bytes) -> None:
    """A thumbnail of the first reference in a corner, so style/edit results show their input."""
    try:
        with Image.open(io.BytesIO(data)) as reference:
            thumbnail = reference.convert("RGB")
            thumbnail.thumbnail((160, 160))
    except (OSError, ValueError, Image.DecompressionBombError):
        return  # not an image Pillow reads: the picture simply goes without it
    image.paste(thumbnail, (12, 12))
