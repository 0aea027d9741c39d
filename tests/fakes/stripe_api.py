"""A loopback stand-in for Stripe's REST API, for the real `stripe` client (STRIPE_API_BASE).

It speaks what Atelier uses of Stripe's protocol: `Authorization: Bearer <secret key>`,
form-encoded bodies with bracketed keys (`metadata[user_id]=…`, `line_items[0][price]=…`),
Stripe's JSON objects and list objects, its error shape (`{"error": {"type", "code",
"message", "param"}}`), and idempotency keys (the same key and parameters replay the first
answer with `Idempotent-Replayed: true`; other parameters are an `idempotency_error`).

Endpoints: customers (create, retrieve, delete, which cancels their subscriptions),
checkout sessions (create, retrieve, list by payment_intent, customer and status, expire),
payment intents (cancel), billing portal sessions (create), subscriptions (retrieve).

What Stripe does on its side (a buyer pays, a subscription renews, a charge is refunded) is
driven by the test through methods that change the stand-in's objects and return them, and
`event()` wraps an object in an event; `sign()` signs a payload as Stripe signs webhooks.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

SECRET_KEY = "sk_test_atelier_stripe_fake"
WEBHOOK_SECRET = "whsec_atelier_test_secret"
API_VERSION = "2026-10-28.endive"
PERIOD_SECONDS = 30 * 24 * 3600
# The statuses a PaymentIntent can be cancelled in.
CANCELABLE = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)
# What GET /v1/checkout/sessions filters by, of what Stripe offers.
FILTERS = ("payment_intent", "customer", "status")


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send: t=…,v1=HMAC-SHA256(secret, "t.payload")."""
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=timestamp
    )
    return header


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding back to objects: a[b][0][c]=v → {"a": {"b": [{"c": "v"}]}}."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node: Any) -> Any:
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [lists(node[k]) for k in sorted(node, key=int)]
            return {k: lists(v) for k, v in node.items()}
        return node

    result: dict[str, Any] = lists(root)
    return result


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    return copied


class SessionClosed(Exception):
    """A buyer tried to pay a Checkout Session that is not open (expired or complete):
    Stripe's page says so and takes no payment."""


class StripeError(Exception):
    def __init__(self, status: int, type_: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **extra}}


def _missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


class StripeApiServer:
    """Stripe's objects in memory, served on 127.0.0.1; `prices` maps price id → mode."""

    def __init__(self, prices: dict[str, str], secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self.prices = dict(prices)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self._idempotent: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = {}
        self._key_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._fail_status: int | None = None
        self._fail_prefix = ""
        self._delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                server._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                server._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """What STRIPE_API_BASE is set to."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_with(self, status: int | None, path_prefix: str = "") -> None:
        """Answer every API request (under `path_prefix`) with this status, as an outage
        would (None: recover)."""
        with self._lock:
            self._fail_status = status
            self._fail_prefix = path_prefix

    def hold_requests(self, seconds: float) -> None:
        """Take `seconds` over each request (to let concurrent requests overlap)."""
        self._delay = seconds

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StripeApiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def requests_to(self, method: str, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [params for m, p, params in self.requests if m == method and p == path]

    # -- the wire ------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length).decode() if length else ""
        params = _nest(parse_qsl(body if method == "POST" else parts.query))
        headers: dict[str, str] = {"Request-Id": f"req_{secrets.token_hex(7)}"}
        with self._lock:
            self.requests.append((method, parts.path, params))
            fail = self._fail_status if parts.path.startswith(self._fail_prefix) else None
        try:
            if fail is not None:
                raise StripeError(fail, "api_error", "The stand-in is having an outage.")
            if request.headers.get("Authorization") != f"Bearer {self.secret_key}":
                raise StripeError(401, "invalid_request_error", "Invalid API Key provided.")
            key = request.headers.get("Idempotency-Key") if method == "POST" else None
            if key:
                status, answer, replayed = self._idempotent_call(key, method, parts.path, params)
                if replayed:
                    headers["Idempotent-Replayed"] = "true"
            else:
                time.sleep(self._delay)
                status, answer = 200, self._route(method, parts.path, params)
        except StripeError as exc:
            status, answer = exc.status, exc.body
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def _idempotent_call(
        self, key: str, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], bool]:
        with self._lock:
            key_lock = self._key_locks[key]
        if not key_lock.acquire(blocking=False):
            # Stripe's answer while the first request with this key is still running.
            raise StripeError(
                409,
                "invalid_request_error",
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please try again later.",
                code="idempotency_key_in_use",
            )
        try:
            with self._lock:
                seen = self._idempotent.get(key)
            if seen is not None:
                seen_path, seen_params, status, answer = seen
                if (seen_path, seen_params) != (f"{method} {path}", params):
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                return status, answer, True
            time.sleep(self._delay)
            try:
                status, answer = 200, self._route(method, path, params)
            except StripeError as exc:
                status, answer = exc.status, exc.body
            with self._lock:
                self._idempotent[key] = (f"{method} {path}", params, status, answer)
            return status, answer, False
        finally:
            key_lock.release()

    def _route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if (method, path) == ("POST", "/v1/customers"):
                return self._create_customer(params)
            if (method, path) == ("POST", "/v1/checkout/sessions"):
                return self._create_session(params)
            if (method, path) == ("GET", "/v1/checkout/sessions"):
                return self._list_sessions(params)
            if (method, path) == ("POST", "/v1/billing_portal/sessions"):
                return self._create_portal_session(params)
            if method == "POST" and path.startswith("/v1/payment_intents/"):
                intent_id, _, action = path.removeprefix("/v1/payment_intents/").partition("/")
                if action == "cancel":
                    return self._cancel_payment_intent(intent_id)
            if method == "POST" and path.startswith("/v1/checkout/sessions/"):
                session_id, _, action = path.removeprefix("/v1/checkout/sessions/").partition("/")
                if action == "expire":
                    return self._expire_session(session_id)
            if method == "DELETE" and path.startswith("/v1/customers/"):
                return self._delete_customer(path.removeprefix("/v1/customers/"))
            for prefix, store, kind in (
                ("/v1/customers/", self.customers, "customer"),
                ("/v1/checkout/sessions/", self.sessions, "checkout.session"),
                ("/v1/subscriptions/", self.subscriptions, "subscription"),
            ):
                if method == "GET" and path.startswith(prefix):
                    object_id = path[len(prefix) :]
                    if object_id not in store:
                        raise _missing(kind, object_id)
                    return _copy(store[object_id])
        raise StripeError(
            404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self._ids):04d}{secrets.token_hex(4)}"

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        return customer

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        for required in ("mode", "success_url", "line_items"):
            if required not in params:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Missing required param: {required}.",
                    code="parameter_missing",
                    param=required,
                )
        customer = params.get("customer")
        if customer is not None and self.customers.get(customer, {"deleted": True}).get("deleted"):
            raise _missing("customer", customer, "customer")
        price = params["line_items"][0]["price"]
        if price not in self.prices:
            raise _missing("price", price, "line_items[0][price]")
        if self.prices[price] != params["mode"]:
            raise StripeError(
                400,
                "invalid_request_error",
                f"The price {price} cannot be used in {params['mode']} mode.",
                param="line_items[0][price]",
            )
        session_id = self._new_id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "created": int(time.time()),
            "mode": params["mode"],
            "status": "open",
            "payment_status": "unpaid",
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "payment_intent": None,
            "subscription": None,
            "invoice": None,
            "amount_total": 1000,
            "currency": "usd",
            "livemode": False,
            # Not part of Stripe's object: what the stand-in needs to play the purchase.
            "_price": price,
            "_subscription_metadata": params.get("subscription_data", {}).get("metadata", {}),
        }
        self.sessions[session_id] = session
        return {k: v for k, v in session.items() if not k.startswith("_")}

    def _list_sessions(self, params: dict[str, Any]) -> dict[str, Any]:
        """GET /v1/checkout/sessions: newest first, filtered by `payment_intent`, `customer`
        and `status`, a page of `limit` after `starting_after`."""
        found = [
            {k: v for k, v in s.items() if not k.startswith("_")}
            for s in reversed(self.sessions.values())
            if all(s[name] == params[name] for name in FILTERS if name in params)
        ]
        after = params.get("starting_after")
        if after is not None:
            ids = [s["id"] for s in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit", 10))
        return {
            "object": "list",
            "data": found[:limit],
            "has_more": len(found) > limit,
            "url": "/v1/checkout/sessions",
        }

    def _expire_session(self, session_id: str) -> dict[str, Any]:
        """POST /v1/checkout/sessions/{id}/expire: only an open session can be expired."""
        session = self.sessions.get(session_id)
        if session is None:
            raise _missing("checkout.session", session_id)
        if session["status"] != "open":
            raise StripeError(
                400,
                "invalid_request_error",
                "Only Checkout Sessions with a status in [open] can be expired.",
            )
        session.update(status="expired", url=None)
        return {k: v for k, v in session.items() if not k.startswith("_")}

    def _delete_customer(self, customer_id: str) -> dict[str, Any]:
        """Delete the customer (DELETE /v1/customers/{id}): as Stripe does, its subscriptions
        are cancelled at once; retrieving it answers `deleted: true`, deleting it again or
        using it is `resource_missing`."""
        if self.customers.get(customer_id, {"deleted": True}).get("deleted"):
            raise _missing("customer", customer_id)
        # Stripe keeps a deleted customer's id: retrieving it answers this stub.
        self.customers[customer_id] = {"id": customer_id, "object": "customer", "deleted": True}
        now = int(time.time())
        for subscription in self.subscriptions.values():
            if subscription["customer"] == customer_id and subscription["status"] != "canceled":
                subscription.update(status="canceled", canceled_at=now, ended_at=now)
        return {"id": customer_id, "object": "customer", "deleted": True}

    def _create_portal_session(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if customer not in self.customers:
            raise _missing("customer", str(customer), "customer")
        portal_id = self._new_id("bps")
        return {
            "id": portal_id,
            "object": "billing_portal.session",
            "created": int(time.time()),
            "customer": customer,
            "return_url": params.get("return_url"),
            "url": f"https://billing.stripe.test/p/session/{portal_id}",
            "livemode": False,
        }

    # -- what happens at Stripe: driven by the test --------------------------------------

    def pay_later(self, session_id: str, status: str = "requires_action") -> dict[str, Any]:
        """The buyer chooses a delayed payment method (a voucher, a bank debit): the session
        completes `unpaid`, its payment intent in `status` until the money arrives."""
        with self._lock:
            session = self._payable(session_id)
            payment_intent = self._new_id("pi")
            self.payment_intents[payment_intent] = {
                "id": payment_intent,
                "object": "payment_intent",
                "amount": session["amount_total"],
                "customer": session["customer"],
                "status": status,
            }
            session.update(
                status="complete", payment_status="unpaid", payment_intent=payment_intent
            )
            return {k: v for k, v in session.items() if not k.startswith("_")}

    def _cancel_payment_intent(self, intent_id: str) -> dict[str, Any]:
        """POST /v1/payment_intents/{id}/cancel: as Stripe, only before it is processing."""
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise _missing("payment_intent", intent_id)
        if intent["status"] not in CANCELABLE:
            raise StripeError(
                400,
                "invalid_request_error",
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        intent["status"] = "canceled"
        return dict(intent)

    def pay(self, session_id: str) -> dict[str, Any]:
        """The buyer pays a credit pack: the session completes, paid, with a payment intent
        and its charge. Returns the session as Stripe would send it."""
        with self._lock:
            session = self._payable(session_id)
            payment_intent = self._new_id("pi")
            charge = {
                "id": self._new_id("ch"),
                "object": "charge",
                "amount": session["amount_total"],
                "amount_refunded": 0,
                "refunded": False,
                "payment_intent": payment_intent,
                "customer": session["customer"],
                "status": "succeeded",
            }
            self.charges[charge["id"]] = charge
            session.update(status="complete", payment_status="paid", payment_intent=payment_intent)
            session["_charge"] = charge["id"]
            return {k: v for k, v in session.items() if not k.startswith("_")}

    def _payable(self, session_id: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        if session["status"] != "open":
            raise SessionClosed(f"Checkout Session {session_id} is {session['status']}")
        return session

    def charge_of(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.charges[self.sessions[session_id]["_charge"]])

    def refund(self, charge_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund a charge (in full unless `amount`); returns the charge."""
        with self._lock:
            charge = self.charges[charge_id]
            charge["amount_refunded"] += charge["amount"] if amount is None else amount
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            return dict(charge)

    def dispute(self, charge_id: str, status: str) -> dict[str, Any]:
        """A dispute of the charge, closed with `status` (lost or won)."""
        with self._lock:
            charge = self.charges[charge_id]
            return {
                "id": self._new_id("dp"),
                "object": "dispute",
                "charge": charge_id,
                "payment_intent": charge["payment_intent"],
                "amount": charge["amount"],
                "status": status,
                "reason": "fraudulent",
            }

    def subscribe(self, session_id: str, status: str = "active") -> dict[str, Any]:
        """The buyer completes a subscription checkout: a subscription in `status`."""
        with self._lock:
            session = self._payable(session_id)
            now = int(time.time())
            subscription_id = self._new_id("sub")
            subscription = {
                "id": subscription_id,
                "object": "subscription",
                "created": now,
                "customer": session["customer"],
                "status": status,
                "cancel_at_period_end": False,
                "metadata": session["_subscription_metadata"],
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": self._new_id("si"),
                            "object": "subscription_item",
                            "price": {"id": session["_price"], "object": "price"},
                            "current_period_start": now,
                            "current_period_end": now + PERIOD_SECONDS,
                            "quantity": 1,
                        }
                    ],
                    "has_more": False,
                },
                "livemode": False,
            }
            self.subscriptions[subscription_id] = subscription
            session.update(status="complete", payment_status="paid", subscription=subscription_id)
            return _copy(subscription)

    def update_subscription(self, subscription_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            subscription.update(changes)
            return _copy(subscription)

    def invoice(self, subscription_id: str, amount_paid: int = 1900) -> dict[str, Any]:
        """A paid invoice of the subscription, in Stripe's current line shape."""
        with self._lock:
            subscription = self.subscriptions[subscription_id]
            item = subscription["items"]["data"][0]
            return {
                "id": self._new_id("in"),
                "object": "invoice",
                "customer": subscription["customer"],
                "status": "paid",
                "amount_paid": amount_paid,
                "billing_reason": "subscription_cycle",
                "parent": {
                    "type": "subscription_details",
                    "subscription_details": {
                        "subscription": subscription_id,
                        "metadata": subscription["metadata"],
                    },
                },
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": self._new_id("il"),
                            "object": "line_item",
                            "amount": amount_paid,
                            "pricing": {
                                "type": "price_details",
                                "price_details": {"price": item["price"]["id"], "product": "prod"},
                            },
                            "period": {
                                "start": item["current_period_start"],
                                "end": item["current_period_end"],
                            },
                        }
                    ],
                    "has_more": False,
                },
            }

    def event(self, type_: str, obj: dict[str, Any], created: int | None = None) -> dict[str, Any]:
        """`obj` wrapped in an event of `type_`, as Stripe posts it to a webhook endpoint."""
        return {
            "id": self._new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()) if created is None else created,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
