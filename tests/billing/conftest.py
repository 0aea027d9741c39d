"""Billing tests: the app with Stripe settings pointed at a loopback Stripe stand-in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, StripeApiServer, sign

ORIGIN = "https://app.atelier.test"
PRODUCTS = [
    {"id": "credits_50", "price_id": "price_50", "credits": 50, "mode": "payment"},
    {"id": "pro", "price_id": "price_pro", "credits": 200, "mode": "subscription"},
]


def billing_changes(stripe_url: str) -> dict[str, Any]:
    """The settings a deployment with Stripe sets (as keyword arguments of Settings)."""
    return {
        "stripe_secret_key": SECRET_KEY,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": stripe_url,
        "stripe_max_network_retries": 0,
        "stripe_timeout_seconds": 5,
        "billing_products": PRODUCTS,
        "checkout_return_origins": [ORIGIN],
        "checkout_success_url": f"{ORIGIN}/billing/done?session_id={{CHECKOUT_SESSION_ID}}",
        "checkout_cancel_url": f"{ORIGIN}/billing",
        "portal_return_url": f"{ORIGIN}/settings",
    }


@pytest.fixture
def billing_settings(
    make_settings: Callable[..., Settings], stripe_api: StripeApiServer
) -> Settings:
    return make_settings(**billing_changes(stripe_api.url), worker_in_process=False)


@pytest.fixture
async def billing(billing_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_settings(billing_settings) as client:
        yield client


def signed(event: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of Stripe's POST of `event` to the webhook endpoint."""
    payload = json.dumps(event)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign(payload, timestamp=timestamp),
    }
    return payload.encode(), headers


async def deliver(
    client: httpx.AsyncClient, event: dict[str, Any], timestamp: int | None = None
) -> httpx.Response:
    body, headers = signed(event, timestamp)
    return await client.post("/webhooks/stripe", content=body, headers=headers)
