"""The offline local provider, and choosing a provider from settings."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from app.config import Settings
from app.services.providers import local
from app.services.providers.base import ImageRequest, ProviderUnavailable, ReferenceImage
from app.services.providers.factory import build_provider
from app.services.providers.gemini import GeminiProvider
from app.services.providers.local import LocalProvider


class Clock:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "PNG")
    return buffer.getvalue()


async def test_same_request_gives_the_same_bytes_and_any_change_differs() -> None:
    provider = LocalProvider()
    reference = ReferenceImage(png_bytes((10, 20, 30)), "image/png")
    request = ImageRequest(prompt="a red kite", kind="style", references=[reference])

    first = await provider.generate(request)
    again = await LocalProvider().generate(request)
    others = [
        await provider.generate(
            ImageRequest(prompt="a red kite!", kind="style", references=[reference])
        ),
        await provider.generate(
            ImageRequest(prompt="a red kite", kind="edit", references=[reference])
        ),
        await provider.generate(
            ImageRequest(
                prompt="a red kite",
                kind="style",
                references=[ReferenceImage(png_bytes((10, 20, 31)), "image/png")],
            )
        ),
    ]

    assert first.data == again.data
    assert len({first.data, *(other.data for other in others)}) == 4


async def test_image_is_a_labelled_png_from_the_local_dev_model() -> None:
    result = await LocalProvider().generate(ImageRequest(prompt="a lighthouse at dusk"))

    assert result.model == "local-dev"
    assert result.mime_type == "image/png"
    with Image.open(io.BytesIO(result.data)) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == (local.SIZE, local.SIZE)
        assert image.info["atelier-provider"] == "local (offline dev tool)"


async def test_undecodable_reference_still_gives_an_image() -> None:
    request = ImageRequest(
        prompt="p", kind="edit", references=[ReferenceImage(b"not an image", "image/png")]
    )

    result = await LocalProvider().generate(request)

    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (local.SIZE, local.SIZE)


async def test_fail_rate_one_always_fails_and_zero_never() -> None:
    failing = LocalProvider(fail_rate=1.0)
    healthy = LocalProvider(fail_rate=0.0)

    for _ in range(20):
        with pytest.raises(ProviderUnavailable) as raised:
            await failing.generate(ImageRequest(prompt="p"))
        assert raised.value.reason == "local provider: simulated failure"
        assert raised.value.retryable
    results = [await healthy.generate(ImageRequest(prompt="p")) for _ in range(5)]

    assert len(results) == 5


async def test_fail_rate_fails_about_that_share_of_calls() -> None:
    provider = LocalProvider(fail_rate=0.5, rng=random.Random(1234))
    failures = 0
    for _ in range(100):
        try:
            await provider.generate(ImageRequest(prompt="p"))
        except ProviderUnavailable:
            failures += 1

    assert 25 < failures < 75


async def test_delay_is_awaited_before_answering() -> None:
    delayed_clock, instant_clock = Clock(), Clock()

    await LocalProvider(delay_ms=250, sleep=delayed_clock.sleep).generate(ImageRequest(prompt="p"))
    await LocalProvider(delay_ms=0, sleep=instant_clock.sleep).generate(ImageRequest(prompt="p"))

    assert delayed_clock.sleeps == [0.25]
    assert instant_clock.sleeps == []


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, env="test", **values)  # type: ignore[arg-type]


async def test_build_provider_follows_the_settings() -> None:
    local_provider = build_provider(
        settings(provider="local", local_provider_delay_ms=40, local_provider_fail_rate=0.25)
    )
    gemini = build_provider(
        settings(provider="gemini", gemini_api_key="k", gemini_models=["m1", "m2"])
    )
    through_proxy = build_provider(
        settings(provider="gemini", gemini_base_url="http://127.0.0.1:9", gemini_models=["m"])
    )
    chained = build_provider(
        settings(
            providers=["gemini", "fal", "replicate"],
            gemini_api_key="k",
            fal_key="f",
            replicate_api_token="r",
        )
    )
    try:
        [local] = local_provider.providers
        assert isinstance(local, LocalProvider)
        assert (local.delay_ms, local.fail_rate) == (40, 0.25)
        [one] = gemini.providers
        assert isinstance(one, GeminiProvider)
        assert one.models == ["m1", "m2"]
        assert isinstance(through_proxy.providers[0], GeminiProvider)
        assert [p.name for p in chained.providers] == ["gemini", "fal", "replicate"]
    finally:
        for provider in (local_provider, gemini, through_proxy, chained):
            await provider.aclose()


def test_build_provider_refuses_gemini_without_a_key() -> None:
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        build_provider(settings(provider="gemini"))


@pytest.mark.parametrize(("name", "needs"), [("fal", "FAL_KEY"), ("replicate", "REPLICATE_API")])
def test_build_provider_refuses_fal_and_replicate_without_their_key(name: str, needs: str) -> None:
    with pytest.raises(ValueError, match=needs):
        build_provider(settings(provider=name))
    with pytest.raises(ValueError, match=needs):
        build_provider(settings(providers=["local", name]))
