"""Billing settings: products, allowed return origins and default URLs are checked at start."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings

PACK = {"id": "credits_50", "price_id": "price_50", "credits": 50, "mode": "payment"}


def settings(**changes: Any) -> Settings:
    return Settings(_env_file=None, **changes)


def test_products_and_origins_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BILLING_PRODUCTS",
        '[{"id":"credits_50","price_id":"price_50","credits":50,"mode":"payment"},'
        '{"id":"pro","price_id":"price_pro","credits":200,"mode":"subscription"}]',
    )
    monkeypatch.setenv("CHECKOUT_RETURN_ORIGINS", "https://App.Example.com, http://localhost:3000")
    monkeypatch.setenv(
        "CHECKOUT_SUCCESS_URL", "https://app.example.com:443/done?x={CHECKOUT_SESSION_ID}"
    )
    loaded = Settings(_env_file=None)
    assert [(p.id, p.mode, p.credits) for p in loaded.billing_products] == [
        ("credits_50", "payment", 50),
        ("pro", "subscription", 200),
    ]
    assert loaded.checkout_return_origins == ["https://app.example.com", "http://localhost:3000"]
    assert not loaded.billing_configured


@pytest.mark.parametrize(
    "changes",
    [
        {"billing_products": [PACK, PACK]},
        {"billing_products": [PACK, dict(PACK, id="other")]},  # one price, two products
        {"billing_products": [dict(PACK, mode="gift")]},
        {"billing_products": [dict(PACK, credits=0)]},
        {"checkout_return_origins": ["app.example.com"]},
        {"checkout_return_origins": ["javascript:alert(1)"]},
        {"checkout_success_url": "https://elsewhere.example/done"},
        {
            "checkout_return_origins": ["https://app.example.com"],
            "portal_return_url": "https://app.example.com.evil.example/",
        },
    ],
)
def test_bad_billing_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings(**changes)
