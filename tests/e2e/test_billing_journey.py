"""Buying credits and the Pro plan through `atelier serve` on the embedded default, with
Stripe's API base pointed at the loopback stand-in and webhooks signed as Stripe signs them:
checkout, signed webhooks (one delivered twice), the balance, the subscription in /v1/me,
a refund, and `atelier check-ledger` at the end."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.billing.conftest import PRODUCTS, signed
from tests.e2e.test_user_journey import stop_leftover_postgres
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, StripeApiServer
from tests.support.serve import ATELIER, clean_env, dev_token, free_port, wait_until_ready

ORIGIN = "https://app.atelier.test"


def post_event(base_url: str, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed(event)
    return httpx.post(base_url + "/webhooks/stripe", content=body, headers=headers, timeout=30)


def test_a_user_buys_a_pack_and_pro_through_atelier_serve_and_the_ledger_checks(
    tmp_path: Path,
) -> None:
    assert ATELIER.exists(), ATELIER
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    pgdata = (tmp_path / ".data" / "pg").resolve()
    with StripeApiServer({"price_50": "payment", "price_pro": "subscription"}) as stripe_api:
        env = clean_env(
            LOG_JSON="false",
            STRIPE_SECRET_KEY=SECRET_KEY,
            STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            STRIPE_API_BASE=stripe_api.url,
            BILLING_PRODUCTS=json.dumps(PRODUCTS),
            CHECKOUT_RETURN_ORIGINS=ORIGIN,
            CHECKOUT_SUCCESS_URL=f"{ORIGIN}/billing/done",
            CHECKOUT_CANCEL_URL=f"{ORIGIN}/billing",
            PORTAL_RETURN_URL=f"{ORIGIN}/settings",
        )
        stderr_path = tmp_path / "serve.stderr"
        with stderr_path.open("wb") as stderr:
            server = subprocess.Popen(
                [str(ATELIER), "serve", "--port", str(port)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            wait_until_ready(server, base_url, stderr_path)
            token = dev_token(tmp_path, env, "user_buyer", "buyer@example.test")
            headers = {"Authorization": f"Bearer {token}"}

            with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
                products = api.get("/v1/billing/products")
                assert products.status_code == 200, products.text
                assert [p["id"] for p in products.json()["items"]] == ["credits_50", "pro"]

                pack = api.post("/v1/billing/checkout", json={"product_id": "credits_50"})
                assert pack.status_code == 201, pack.text
                session = stripe_api.pay(pack.json()["id"])
                completed = stripe_api.event("checkout.session.completed", session)
                for _ in range(2):  # Stripe delivers at least once
                    assert post_event(base_url, completed).status_code == 200
                assert api.get("/v1/me").json()["credits"] == 55

                pro = api.post("/v1/billing/checkout", json={"product_id": "pro"})
                assert pro.status_code == 201, pro.text
                subscription = stripe_api.subscribe(pro.json()["id"])
                invoice = stripe_api.invoice(subscription["id"])
                # The invoice is told before the subscription: order does not matter.
                assert post_event(base_url, stripe_api.event("invoice.paid", invoice)).is_success
                created = stripe_api.event("customer.subscription.created", subscription)
                assert post_event(base_url, created).is_success
                me = api.get("/v1/me").json()
                assert me["credits"] == 255
                assert me["subscription"]["status"] == "Pro"
                assert me["subscription"]["stripe_status"] == "active"
                assert me["subscription"]["price_id"] == "price_pro"

                charge = stripe_api.refund(stripe_api.charge_of(session["id"])["id"])
                assert post_event(base_url, stripe_api.event("charge.refunded", charge)).is_success
                assert api.get("/v1/me").json()["credits"] == 205

                portal = api.post("/v1/billing/portal")
                assert portal.status_code == 200, portal.text

                forged = dict(completed, id="evt_forged")
                body = json.dumps(forged).encode()
                refused = httpx.post(
                    base_url + "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": "t=1,v1=00"},
                    timeout=30,
                )
                assert refused.status_code == 400

            checked = subprocess.run(
                [str(ATELIER), "check-ledger"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert "every balance matches its ledger" in checked.stdout

            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=60) == 0, stderr_path.read_text(errors="replace")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=30)
            stop_leftover_postgres(pgdata)
