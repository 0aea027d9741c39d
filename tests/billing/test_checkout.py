"""GET /v1/billing/products, POST /v1/billing/checkout and /v1/billing/portal, against the
real `stripe` client talking to a loopback Stripe stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from app.config import Settings
from tests.billing.conftest import ORIGIN, billing_changes, deliver
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import StripeApiServer
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]


async def test_products_lists_what_is_configured(
    billing: httpx.AsyncClient, auth_headers: Headers
) -> None:
    response = await billing.get("/v1/billing/products", headers=auth_headers("user_p"))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "items": [
            {"id": "credits_50", "mode": "payment", "credits": 50},
            {"id": "pro", "mode": "subscription", "credits": 200},
        ]
    }


async def test_without_a_stripe_key_billing_answers_503_and_the_rest_works(
    client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers("user_keyless")
    for method, path, body in (
        ("GET", "/v1/billing/products", None),
        ("POST", "/v1/billing/checkout", {"product_id": "credits_50"}),
        ("POST", "/v1/billing/portal", {}),
    ):
        response = await client.request(method, path, json=body, headers=headers)
        problem = assert_problem(response, 503)
        assert problem["detail"] == "Billing is not configured."
    webhook = await client.post("/webhooks/stripe", content=b"{}")
    assert_problem(webhook, 503)
    me = await client.get("/v1/me", headers=headers)
    assert me.status_code == 200 and me.json()["credits"] == 5


async def test_checkout_makes_one_customer_and_a_session_naming_user_and_product(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    headers = auth_headers("user_buyer", "buyer@example.test")
    first = await billing.post(
        "/v1/billing/checkout", json={"product_id": "credits_50"}, headers=headers
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"id", "url"}
    assert body["url"].startswith("https://checkout.stripe.test/")

    [customer] = stripe_api.customers.values()
    assert customer["metadata"] == {"user_id": "user_buyer"}
    assert customer["email"] == "buyer@example.test"
    session = stripe_api.sessions[body["id"]]
    assert session["client_reference_id"] == "user_buyer"
    assert session["metadata"] == {"user_id": "user_buyer", "product_id": "credits_50"}
    assert session["customer"] == customer["id"]
    assert session["mode"] == "payment"
    assert session["success_url"].startswith(ORIGIN + "/billing/done")
    stored = await db.fetchval(
        "SELECT stripe_customer_id FROM subscriptions WHERE user_id = 'user_buyer'"
    )
    assert stored == customer["id"]

    pro = await billing.post(
        "/v1/billing/checkout",
        json={"product_id": "pro", "success_url": f"{ORIGIN}/welcome-pro"},
        headers=headers,
    )
    assert pro.status_code == 201, pro.text
    assert len(stripe_api.customers) == 1  # the same customer again
    assert len(stripe_api.requests_to("POST", "/v1/customers")) == 1
    pro_session = stripe_api.sessions[pro.json()["id"]]
    assert pro_session["mode"] == "subscription" and pro_session["customer"] == customer["id"]
    assert pro_session["_subscription_metadata"] == {"user_id": "user_buyer", "product_id": "pro"}


async def test_concurrent_first_checkouts_make_one_customer(
    make_settings: Callable[..., Settings],
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    db: asyncpg.Connection,
) -> None:
    # Stripe answers 409 to a request whose idempotency key is in use, and the client retries.
    changes = billing_changes(stripe_api.url) | {"stripe_max_network_retries": 2}
    headers = auth_headers("user_racer")
    async with running_settings(make_settings(**changes, worker_in_process=False)) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        stripe_api.hold_requests(0.3)  # each checkout asks for a customer before one is stored
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/billing/checkout", json={"product_id": "credits_50"}, headers=headers
                )
                for _ in range(4)
            )
        )
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert len(stripe_api.requests_to("POST", "/v1/customers")) >= 4  # they did race
    assert len(stripe_api.customers) == 1
    [customer_id] = stripe_api.customers
    assert {stripe_api.sessions[a.json()["id"]]["customer"] for a in answers} == {customer_id}
    stored = "SELECT stripe_customer_id FROM subscriptions WHERE user_id = 'user_racer'"
    assert await db.fetchval(stored) == customer_id


async def test_an_unknown_product_is_422(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    response = await billing.post(
        "/v1/billing/checkout", json={"product_id": "credits_9000"}, headers=auth_headers("u1")
    )
    assert_problem(response, 422)
    assert stripe_api.requests == []


@pytest.mark.parametrize(
    "field, url",
    [
        ("success_url", "https://evil.example/steal"),
        ("cancel_url", "https://app.atelier.test.evil.example/"),
        ("success_url", "//evil.example/x"),
        ("success_url", "/billing/done"),
        ("cancel_url", "javascript:alert(1)"),
        ("success_url", "http://app.atelier.test/plain-http"),
    ],
)
async def test_return_urls_off_the_allowed_origins_are_422(
    billing: httpx.AsyncClient,
    auth_headers: Headers,
    stripe_api: StripeApiServer,
    field: str,
    url: str,
) -> None:
    response = await billing.post(
        "/v1/billing/checkout",
        json={"product_id": "credits_50", field: url},
        headers=auth_headers("user_redirect"),
    )
    assert_problem(response, 422)
    portal = await billing.post(
        "/v1/billing/portal", json={"return_url": url}, headers=auth_headers("user_redirect")
    )
    assert_problem(portal, 422)
    assert stripe_api.requests == []


async def test_a_stripe_outage_is_a_503_problem(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    stripe_api.fail_with(500)
    response = await billing.post(
        "/v1/billing/checkout", json={"product_id": "credits_50"}, headers=auth_headers("u_out")
    )
    assert_problem(response, 503)
    stripe_api.fail_with(None)
    again = await billing.post(
        "/v1/billing/checkout", json={"product_id": "credits_50"}, headers=auth_headers("u_out")
    )
    assert again.status_code == 201, again.text


async def test_an_unreachable_stripe_is_a_503_problem(
    make_settings: Callable[..., Settings], auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    url = stripe_api.url
    stripe_api.stop()  # nothing listens there any more
    settings = make_settings(**billing_changes(url), worker_in_process=False)
    async with running_settings(settings) as client:
        response = await client.post(
            "/v1/billing/checkout", json={"product_id": "pro"}, headers=auth_headers("u_gone")
        )
    assert_problem(response, 503)


async def test_portal_is_409_before_a_customer_exists_then_answers_a_url(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    headers = auth_headers("user_portal")
    assert_problem(await billing.post("/v1/billing/portal", headers=headers), 409)
    checkout = await billing.post(
        "/v1/billing/checkout", json={"product_id": "pro"}, headers=headers
    )
    assert checkout.status_code == 201, checkout.text
    portal = await billing.post("/v1/billing/portal", headers=headers)
    assert portal.status_code == 200, portal.text
    assert portal.json()["url"].startswith("https://billing.stripe.test/")
    [request] = stripe_api.requests_to("POST", "/v1/billing_portal/sessions")
    assert request["return_url"] == f"{ORIGIN}/settings"


async def test_pro_checkout_is_409_while_the_plan_is_active(
    billing: httpx.AsyncClient, auth_headers: Headers, stripe_api: StripeApiServer
) -> None:
    headers = auth_headers("user_pro")
    checkout = await billing.post(
        "/v1/billing/checkout", json={"product_id": "pro"}, headers=headers
    )
    subscription = stripe_api.subscribe(checkout.json()["id"])
    answer = await deliver(billing, stripe_api.event("customer.subscription.created", subscription))
    assert answer.status_code == 200, answer.text
    again = await billing.post("/v1/billing/checkout", json={"product_id": "pro"}, headers=headers)
    assert_problem(again, 409)
    pack = await billing.post(
        "/v1/billing/checkout", json={"product_id": "credits_50"}, headers=headers
    )
    assert pack.status_code == 201, pack.text
