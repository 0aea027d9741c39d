"""The docs' curl samples work: each operation's sample request, built by the code that renders
its `x-codeSamples` (`app.openapi_samples`), is sent to a seeded app and gets a documented
success.

The sample's example ids are swapped for the seeded rows' ids (in the path and the JSON
body), its `$ATELIER_TOKEN` for a real token, `$(openssl rand -hex 16)` for a new key;
nothing else is changed. Not replayed: the samples labelled as illustrations (a webhook's
made-up signature, a made-up signed /files URL: they cannot succeed by design), and
GET /v1/feed/events, which never ends, so an in-process client (which reads a whole body)
cannot receive it; tests/api/test_contract.py reads its events over loopback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from app.config import Settings
from app.core.executors import DaemonPool
from app.main import create_app
from app.openapi import restore_examples
from app.openapi_examples import PARAMETER_EXAMPLES
from app.openapi_samples import (
    ILLUSTRATIONS,
    NEW_KEY,
    SampleRequest,
    header_name,
    render_curl,
    sample_requests,
)
from app.schemas.api_keys import API_KEY_EXAMPLE
from app.schemas.generations import IMAGE_ID_EXAMPLE, JOB_ID_EXAMPLE
from app.schemas.outgoing import ENDPOINT_EXAMPLE
from app.schemas.packs import SET_ID_EXAMPLE
from app.services import webhook_urls
from tests.billing.conftest import billing_changes
from tests.fakes.running import running_settings
from tests.fakes.stripe_api import StripeApiServer
from tests.generation.conftest import image_bytes
from tests.support.packs import create_pack, make_set

USER = "user_samples"
METRICS_TOKEN = "metrics-token-for-samples"
NOT_REPLAYED = {"stream_feed_events", *ILLUSTRATIONS}
# Lists the seeding leaves empty: no webhook was delivered.
NOTHING_TO_LIST = {"list_webhook_deliveries"}
# Run after the others, in this order: each removes what earlier samples use.
FINALLY = (
    "admin_take_down_image",
    "remove_pack_icon",
    "delete_prompt",
    "unlike_image",
    "delete_image",
    "delete_pack",
    "delete_webhook_endpoint",
    "delete_me",
)
# The samples' own addresses: app.example.com is where the docs' checkout returns to.
RETURN_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = create_app(Settings(_env_file=None)).openapi()
    return document


def _changes(stripe_url: str) -> dict[str, Any]:
    return {
        **billing_changes(stripe_url),
        "checkout_return_origins": [
            RETURN_ORIGIN,
            *billing_changes(stripe_url)["checkout_return_origins"],
        ],
        "admin_user_ids": [USER],
        "metrics_token": METRICS_TOKEN,
        "new_user_credits": 100,
    }


async def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def _seed(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    """The user's rows the samples name, by the example id each stands for."""
    wait = {**headers, "Prefer": "wait=10"}
    job = await _ok(await client.post("/v1/generations", json={"prompt": "a"}, headers=wait))
    public = {"prompt": "b", "visibility": "public"}  # in the feed
    other = await _ok(await client.post("/v1/generations", json=public, headers=wait))
    pack = await create_pack(client, headers)
    pack_set = await make_set(client, headers, pack, ["an owl"])
    prompt = await _ok(
        await client.post("/v1/prompts", json={"prompt_text": "x"}, headers=headers), 201
    )
    key = await _ok(await client.post("/v1/api-keys", json={"name": "k"}, headers=headers), 201)
    endpoint = await _ok(
        await client.post(
            "/v1/webhook-endpoints",
            json={"url": "https://8.8.8.8/hook", "events": ["job.failed"]},
            headers=headers,
        ),
        201,
    )
    return {
        JOB_ID_EXAMPLE: job["id"],
        IMAGE_ID_EXAMPLE: job["image"]["id"],
        "takedown": other["image"]["id"],
        str(PARAMETER_EXAMPLES["pack_id"]): pack,
        SET_ID_EXAMPLE: pack_set["id"],
        str(PARAMETER_EXAMPLES["prompt_id"]): prompt["id"],
        API_KEY_EXAMPLE["id"]: key["id"],
        ENDPOINT_EXAMPLE["id"]: endpoint["id"],
        str(PARAMETER_EXAMPLES["user_id"]): USER,
    }


def _swap(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_swap(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: _swap(item, ids) for key, item in value.items()}
    return value


def _path_params(request: SampleRequest, ids: dict[str, str]) -> dict[str, str]:
    params = {name: ids.get(value, value) for name, value in request.path_params.items()}
    if request.operation_id == "admin_take_down_image":  # not the image the others use
        params["image_id"] = ids["takedown"]
    return params


async def _replay(
    client: httpx.AsyncClient, request: SampleRequest, ids: dict[str, str], tokens: dict[str, str]
) -> httpx.Response:
    files = {name: ("icon.png", image_bytes("PNG"), "image/png") for name in request.files}
    token = tokens[request.token] if request.token else None
    return await client.request(
        request.method,
        request.url(_path_params(request, ids), base=""),
        headers=request.http_headers(token),
        json=_swap(request.body, ids) if request.has_body else None,
        files=files or None,
        follow_redirects=request.redirects,
    )


def _successes(spec: dict[str, Any], request: SampleRequest) -> set[int]:
    responses = spec["paths"][request.path][request.method.lower()]["responses"]
    return {int(status) for status in responses if str(status)[0] in "23"}


def _listed(response: httpx.Response) -> list[Any] | None:
    """A page's items; None for any other answer."""
    if response.headers.get("content-type") != "application/json":
        return None
    body = response.json()
    return body.get("items") if isinstance(body, dict) else None


def _in_order(requests: list[SampleRequest]) -> list[SampleRequest]:
    last = {operation_id: index for index, operation_id in enumerate(FINALLY)}
    return sorted(requests, key=lambda request: last.get(request.operation_id, -1))


@pytest.fixture
async def offline_example_com(monkeypatch: pytest.MonkeyPatch) -> None:
    """example.com (the endpoint URL of the docs) resolves to its public address, as it does
    online: this machine has no DNS. Nothing is sent to it (no job ends during the replay)."""
    resolve = webhook_urls.lookup

    async def lookup(host: str, port: int, *resolver: DaemonPool) -> list[str]:
        return ["93.184.215.14"] if host == "example.com" else await resolve(host, port, *resolver)

    monkeypatch.setattr(webhook_urls, "lookup", lookup)


async def test_every_sample_request_succeeds_against_a_seeded_app(
    spec: dict[str, Any],
    make_settings: Callable[..., Settings],
    dev_token: Callable[..., str],
    stripe_api: StripeApiServer,
    offline_example_com: None,
) -> None:
    settings = make_settings(**_changes(stripe_api.url))
    tokens = {"ATELIER_TOKEN": dev_token(USER), "METRICS_TOKEN": METRICS_TOKEN}
    headers = {"Authorization": f"Bearer {tokens['ATELIER_TOKEN']}"}
    async with running_settings(settings) as client:
        ids = await _seed(client, headers)
    # The worker is off now: the samples' jobs stay pending, so no webhook is delivered.
    replaying = settings.model_copy(update={"worker_in_process": False})
    requests = [r for r in sample_requests(spec) if r.operation_id not in NOT_REPLAYED]
    assert len(requests) == len(sample_requests(spec)) - len(NOT_REPLAYED)
    failed = []
    async with running_settings(replaying) as client:
        for request in _in_order(requests):
            response = await _replay(client, request, ids, tokens)
            if response.status_code not in _successes(spec, request):
                failed.append(f"{request.operation_id}: {response.status_code} {response.text}")
            elif _listed(response) == [] and request.operation_id not in NOTHING_TO_LIST:
                failed.append(f"{request.operation_id}: lists nothing of what was seeded")
    assert failed == []


def test_samples_send_what_a_first_call_needs_and_no_more(spec: dict[str, Any]) -> None:
    samples = {request.operation_id: request for request in sample_requests(spec)}
    assert samples["admin_get_stats"].query == []  # days and since together are a 422
    for listing in ("list_jobs", "list_my_images", "list_feed", "list_credit_ledger"):
        assert samples[listing].query == [], listing  # no made-up cursor, no filter
    assert samples["download_image"].token == "ATELIER_TOKEN"  # optional, but own images
    assert samples["metrics"].token == "METRICS_TOKEN"
    assert samples["healthz"].token is None
    for keyed in ("create_generation", "create_pack_generations", "admin_adjust_credits"):
        assert samples[keyed].headers == [("Idempotency-Key", NEW_KEY)], keyed
    generation = render_curl(samples["create_generation"])
    assert '-H "Idempotency-Key: $(openssl rand -hex 16)"' in generation
    assert '-H "Authorization: Bearer $ATELIER_TOKEN"' in generation
    assert "-F file=@icon.png" in render_curl(samples["create_upload"])
    assert header_name("last-event-id") == "Last-Event-ID"


def test_illustrations_say_so(spec: dict[str, Any]) -> None:
    for path, method in (
        ("/webhooks/stripe", "post"),
        ("/webhooks/clerk", "post"),
        ("/files/{key}", "get"),
    ):
        [sample] = spec["paths"][path][method]["x-codeSamples"]
        assert sample["label"] == "curl (illustration)"
        assert sample["source"].startswith("# Illustration only: ")
    health: dict[str, str] = spec["paths"]["/healthz"]["get"]["x-codeSamples"][0]
    assert health == {
        "lang": "Shell",
        "label": "curl",
        "source": "curl http://127.0.0.1:8000/healthz",
    }


class _Clash(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "one"}]})
    name: str


class _Twin(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "two"}]})
    name: str


def test_examples_are_restored_only_onto_the_models_own_component() -> None:
    _Twin.__name__ = _Clash.__name__ = "Thing"
    schemas: dict[str, Any] = {"Thing": {"properties": {"name": {"type": "string"}}}}
    with pytest.raises(RuntimeError, match="The component Thing fits 2 of the models"):
        restore_examples(schemas, [_Clash, _Twin])
    restore_examples(schemas, [_Twin])
    assert schemas["Thing"]["examples"] == [{"name": "two"}]
    other = {"Thing": {"properties": {"title": {"type": "string"}}}}
    with pytest.raises(RuntimeError, match="fits 0"):
        restore_examples(other, [_Twin])
