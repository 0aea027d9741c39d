"""The OpenAPI document is exact: schemathesis runs every check over every operation of the
app, served with its lifespan on loopback, and any finding fails the test.

Seeded (`derandomize`) and bounded (a few examples per operation) so the run is the same each
time and takes a minute or two. Besides schemathesis' checks, each answer carries exactly the
headers its documented response declares (`undeclared_headers`). What cannot be generated
from a schema is special-cased here, never by loosening a check: a cursor (opaque: a positive
case gets one this API could have handed out), an upload (a positive case sends a real PNG),
and the feed's event stream, which never ends (its events are checked against the document
in `test_feed_events_match_the_document`).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import itertools
import json
import pkgutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from app.config import Settings
from app.main import create_app
from app.services import devauth, pagination
from tests.fakes.stripe_api import SECRET_KEY, WEBHOOK_SECRET, StripeApiServer
from tests.support.documented import assert_documented_headers, header_gaps
from tests.support.live import ServedApp

Case = schemathesis.Case[Any]
ADMIN = "user_contract_admin"
CLERK_SECRET = "whsec_" + base64.b64encode(b"atelier-contract-test-secret").decode()
ORIGIN = "https://app.atelier.test"
# Streams that do not end by themselves: checked apart, below.
ENDLESS = {"stream_feed_events"}
# A webhook's body counts only with the provider's signature over it, which no schema can
# describe: every generated delivery is a documented 400, and a signed one is tested in
# tests/billing and tests/identity. Every other check still runs on them.
SIGNED_BODY_EXCLUDED = [schemathesis.checks.positive_data_acceptance]


class Contract:
    """The served app, and tokens for it: a new user per case (DELETE /v1/me erases one)."""

    def __init__(self, served: ServedApp, settings: Settings) -> None:
        self.served = served
        self.key = devauth.load_or_create_key(settings.dev_key_path)
        self.settings = settings
        self._users = itertools.count()

    def token(self, user_id: str | None = None) -> str:
        user_id = user_id or f"user_contract_{next(self._users)}"
        return devauth.mint(self.settings, self.key, user_id, email=f"{user_id}@example.test")


@pytest.fixture(scope="module")
def contract(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory, dev_key_pem: bytes
) -> Iterator[Contract]:
    data = tmp_path_factory.mktemp("contract") / "data"
    data.mkdir()
    (data / "dev-auth-key.pem").write_bytes(dev_key_pem)
    with StripeApiServer({"price_50": "payment", "price_pro": "subscription"}) as stripe:
        settings = Settings(
            _env_file=None,
            env="test",
            database_url=module_db_url,
            data_dir=Path(data),
            auth="dev",
            log_json=False,
            db_pool_min_size=1,
            db_pool_max_size=20,
            worker_in_process=False,  # jobs stay pending: nothing runs behind the checks
            max_prefer_wait_seconds=1,  # `Prefer: wait=60` would wait for a job no one runs
            new_user_credits=1_000,  # a schema-valid generation is not refused for credits
            admin_user_ids=[ADMIN],
            clerk_webhook_secret=CLERK_SECRET,
            stripe_secret_key=SECRET_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe.url,
            stripe_max_network_retries=0,
            stripe_timeout_seconds=5,
            billing_products=[
                {"id": "credits_50", "price_id": "price_50", "credits": 50, "mode": "payment"},
                {"id": "pro", "price_id": "price_pro", "credits": 200, "mode": "subscription"},
            ],
            checkout_return_origins=[ORIGIN],
            # a webhook URL must resolve to a public address unless this is set, and nothing
            # resolves offline: the positive cases name a loopback receiver instead
            webhooks_allow_private=True,
            checkout_success_url=f"{ORIGIN}/billing/done?session_id={{CHECKOUT_SESSION_ID}}",
            checkout_cancel_url=f"{ORIGIN}/billing",
            portal_return_url=f"{ORIGIN}/settings",
        )
        with ServedApp(create_app(settings), lifespan=True) as served:
            DevTokens.contract = Contract(served, settings)
            yield DevTokens.contract
            DevTokens.contract = None


@pytest.fixture(scope="module")
def contract_schema(contract: Contract) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(contract.served.url + "/openapi.json")


# Import every module of schemathesis now, at collection (it imports many lazily): CPython
# 3.11.7 fails to compile a module (SystemError "AST constructor recursion depth mismatch",
# gh-106905) after an earlier test in the run hit a RecursionError (test_hardening's deeply
# nested JSON).
for _module in pkgutil.walk_packages(schemathesis.__path__, "schemathesis."):
    with contextlib.suppress(ImportError):  # optional extras (GraphQL, ...)
        importlib.import_module(_module.name)
load_all_checks()

schema = schemathesis.pytest.from_fixture("contract_schema").exclude(operation_id=sorted(ENDLESS))


@schema.auth(refresh_interval=None)  # not cached: each case signs in as a new user
class DevTokens:
    """Bearer tokens through schemathesis' auth, so its negative cases (no token, a bad one)
    stay what they were generated as. The admin operations get an admin's token."""

    contract: Contract | None = None

    def get(self, case: Case, ctx: schemathesis.AuthContext) -> str:
        assert self.contract is not None, "the contract fixture sets it"
        admin = case.path.startswith("/v1/admin/")
        return self.contract.token(ADMIN if admin else None)

    def set(self, case: Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schema reads `node._nodeid`, which pytest 9 no longer sets
    (`nodeid` is a property now); it names each operation's subtest after it."""
    node: Any = request.node
    if not hasattr(node, "_nodeid"):
        node._nodeid = node.nodeid


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def _realistic(case: Case) -> None:
    """Give a positive case what a schema cannot describe: a cursor this API could have
    handed out, and an image that decodes."""
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE:
        return
    if case.query and case.query.get("cursor"):
        if case.path == "/v1/credits/ledger":
            case.query["cursor"] = pagination.encode_id(2**40)
        else:
            case.query["cursor"] = pagination.encode_time_id(datetime.now(UTC), uuid4())
    if case.operation.label == "POST /v1/uploads" and isinstance(case.body, dict):
        body: dict[str, Any] = case.body
        body["file"] = PNG
    # Configured per deployment (CHECKOUT_RETURN_ORIGINS, BILLING_PRODUCTS), so the document
    # cannot list them: 422 otherwise, as the operations say.
    if case.path.startswith("/v1/billing/") and isinstance(case.body, dict):
        for field in ("success_url", "cancel_url", "return_url"):
            if case.body.get(field) is not None:
                case.body[field] = f"{ORIGIN}/back"
        if "product_id" in case.body:
            case.body["product_id"] = "credits_50"
    # A webhook endpoint's URL must resolve (nothing does offline but an address).
    endpoints = ("/v1/webhook-endpoints", "/v1/webhook-endpoints/{endpoint_id}")
    if case.path in endpoints and isinstance(case.body, dict) and "url" in case.body:
        case.body["url"] = "https://127.0.0.1/hooks"
    # The window may reach at most 366 days back from now, and is `days` or `since`, not both
    # (OpenAPI cannot say that of two query parameters; the operation's text does).
    if case.path == "/v1/admin/stats" and case.query and case.query.get("since"):
        case.query["since"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        case.query.pop("days", None)


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_the_service_answers_as_its_document_says(case: Case, contract: Contract) -> None:
    _realistic(case)
    excluded = SIGNED_BODY_EXCLUDED if case.path.startswith("/webhooks/") else []
    checks = [check for check in every_check() if check not in excluded]
    case.call_and_validate(checks=[*checks, undeclared_headers], timeout=30)


def undeclared_headers(ctx: Any, response: Any, case: Case) -> None:
    """Every header of an answer is declared on its documented response, and every one
    declared required is sent (schemathesis' `response_headers_conformance` checks the
    latter and each value's schema, not the former). An undocumented status is
    `status_code_conformance`'s to report."""
    documented = case.operation.responses.find_by_status_code(response.status_code)
    if documented is None:
        return
    declared = {name: header.definition for name, header in documented.headers.items()}
    gaps = header_gaps(declared, response.headers)
    assert not gaps, f"{case.operation.label} answered {response.status_code}: {gaps}"


def every_check() -> list[Any]:
    """Every check schemathesis has (the CLI's `--checks all`), named, not left to defaults."""
    load_all_checks()
    checks = [check for check in CHECKS.get_all() if callable(check)]
    assert len(checks) >= 14, [check.__name__ for check in checks]
    return checks


def _read_events(response: httpx.Response, count: int) -> list[dict[str, str]]:
    """The first `count` events of a stream, as schemathesis reads them (fields as strings)."""
    events: list[dict[str, str]] = []
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                events.append(event)
                event = {}
            if len(events) == count:
                break
            continue
        name, _, value = line.partition(":")
        if name:  # a line starting with ":" is a comment (a keep-alive ping)
            event[name] = value.removeprefix(" ")
    return events


def _check_event(spec: dict[str, Any], path: str, event: dict[str, str]) -> None:
    """`event` is valid under the stream's `itemSchema`, and its `data` under the
    `contentSchema` of that event's schema."""
    content = spec["paths"][path]["get"]["responses"]["200"]["content"]
    item = content["text/event-stream"]["itemSchema"]
    components = {"components": spec["components"]}
    jsonschema.validate(event, {**item, **components})
    mapping = item.get("discriminator", {}).get("mapping", {})
    ref = mapping.get(event["event"], item.get("$ref"))
    assert ref, event
    model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    data_schema = model["properties"]["data"]["contentSchema"]
    jsonschema.validate(json.loads(event["data"]), {**data_schema, **components})


def test_event_streams_send_what_the_document_says(contract: Contract) -> None:
    """The streams, checked apart (the feed never ends; a job's events need a job): the
    feed's `ready` and, on a reconnect with Last-Event-ID, `resync`; a job's first event;
    and the headers of each stream as its 200 declares them."""
    with httpx.Client(base_url=contract.served.url, timeout=30) as client:
        spec = client.get("/openapi.json").json()
        reader = {"Authorization": f"Bearer {contract.token()}", "Last-Event-ID": "ready-x"}
        with client.stream("GET", "/v1/feed/events", headers=reader) as stream:
            assert stream.status_code == 200
            assert_documented_headers(spec, "GET", "/v1/feed/events", stream)
            events = _read_events(stream, 2)
        assert [e["event"] for e in events] == ["ready", "resync"]
        for event in events:
            _check_event(spec, "/v1/feed/events", event)

        owner = {"Authorization": f"Bearer {contract.token()}"}
        created = client.post("/v1/generations", json={"prompt": "a fox"}, headers=owner)
        assert created.status_code == 202, created.text
        assert_documented_headers(spec, "POST", "/v1/generations", created)
        path = f"/v1/jobs/{created.json()['id']}/events"
        with client.stream("GET", path, headers=owner) as stream:
            assert stream.status_code == 200
            assert_documented_headers(spec, "GET", "/v1/jobs/{job_id}/events", stream)
            (event,) = _read_events(stream, 1)
        assert event["event"] == "job"
        _check_event(spec, "/v1/jobs/{job_id}/events", event)
        assert json.loads(event["data"])["status"] == "pending"

        # A broken contract is caught: data that is not a job fails its contentSchema.
        with pytest.raises(jsonschema.ValidationError):
            _check_event(spec, "/v1/jobs/{job_id}/events", {**event, "data": '{"id": 1}'})
