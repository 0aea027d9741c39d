"""Signed URLs are reused only while they still have the lifetime asked for."""

from __future__ import annotations

from app.services.storage.base import SignedUrls


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_url_is_reused_while_it_has_the_asked_lifetime_left_then_signed_anew() -> None:
    clock = Clock()
    urls = SignedUrls(clock=clock)
    signed: list[tuple[str, int]] = []

    def sign(key: str, seconds: int) -> str:
        signed.append((key, seconds))
        return f"https://r2.test/{key}?expires={clock.now + seconds:.0f}"

    first = urls.get("a.png", 300, sign)
    assert signed == [("a.png", 450)]
    clock.now += 150  # 300 s left: still long enough
    assert urls.get("a.png", 300, sign) == first
    assert len(signed) == 1
    clock.now += 1  # 299 s left: too short for a 300 s link
    renewed = urls.get("a.png", 300, sign)
    assert renewed != first and len(signed) == 2
    # Another key, or another lifetime, is another URL.
    urls.get("b.png", 300, sign)
    urls.get("a.png", 60, sign)
    assert signed[2:] == [("b.png", 450), ("a.png", 90)]
