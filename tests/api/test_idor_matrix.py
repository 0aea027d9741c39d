"""Another user's ids, through every route that takes one: always 404, and nothing changes.

The table is checked against the app's route table (its OpenAPI document): a route with a
path parameter and no case here fails `test_every_route_with_an_id_has_an_idor_case`, so
a new route cannot be forgotten. Ids in bodies (a generation's reference and pack, a pack's
icon and cover) are attacked too.

The exceptions are reads of what Bob made public (`READS`): a public image, and a public
pack (icons, every one public), which anyone signed in may read and export. Every write to
that pack is still his alone (`CASES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.generation.conftest import image_bytes
from tests.support.packs import finished_set
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_idor_alice", "user_idor_bob"


@dataclass
class Victim:
    """What Bob owns, and Alice's own things to aim with."""

    private_image: str
    public_image: str
    icon: str  # a private image of Bob's, in his pack
    prompt: str
    pack: str  # private: its icons are
    public_pack: str  # its one icon is public
    public_icon: str
    pack_set: str  # a set of icons asked for in Bob's pack
    job: str
    upload_key: str
    alice_image: str
    alice_pack: str
    alice_signed_path: str  # a signed /files URL Alice was handed for her own image
    bob_private_key: str
    api_key: str  # one of Bob's API keys
    endpoint: str  # Bob's outgoing-webhook endpoint


@dataclass(frozen=True)
class Case:
    method: str
    route: str  # the OpenAPI path template it covers
    url: Callable[[Victim], str]
    body: Callable[[Victim], dict[str, Any]] | None = None
    status: int = 404


def _files_path(v: Victim) -> str:
    """Alice's signature, Bob's key: the signature covers the key, so it does not fit."""
    query = parse_qs(urlsplit(v.alice_signed_path).query)
    return f"/files/{v.bob_private_key}?exp={query['exp'][0]}&sig={query['sig'][0]}"


def _generation(**fields: Any) -> Callable[[Victim], dict[str, Any]]:
    def body(v: Victim) -> dict[str, Any]:
        resolved = {k: (f(v) if callable(f) else f) for k, f in fields.items()}
        return {"prompt": "borrowed", **resolved}

    return body


CASES: list[Case] = [
    # images: Bob's private one through every method, and his public one where only the
    # owner may act
    Case("GET", "/v1/images/{image_id}", lambda v: f"/v1/images/{v.private_image}"),
    Case(
        "PATCH",
        "/v1/images/{image_id}",
        lambda v: f"/v1/images/{v.private_image}",
        lambda v: {"visibility": "public"},
    ),
    Case(
        "PATCH",
        "/v1/images/{image_id}",
        lambda v: f"/v1/images/{v.public_image}",
        lambda v: {"visibility": "private"},
    ),
    Case("DELETE", "/v1/images/{image_id}", lambda v: f"/v1/images/{v.private_image}"),
    Case("DELETE", "/v1/images/{image_id}", lambda v: f"/v1/images/{v.public_image}"),
    Case(
        "GET",
        "/v1/images/{image_id}/download",
        lambda v: f"/v1/images/{v.private_image}/download?redirect=false",
    ),
    Case("GET", "/v1/images/{image_id}/download", lambda v: f"/v1/images/{v.icon}/download"),
    Case("PUT", "/v1/images/{image_id}/like", lambda v: f"/v1/images/{v.private_image}/like"),
    Case("DELETE", "/v1/images/{image_id}/like", lambda v: f"/v1/images/{v.private_image}/like"),
    # jobs
    Case("GET", "/v1/jobs/{job_id}", lambda v: f"/v1/jobs/{v.job}"),
    Case("GET", "/v1/jobs/{job_id}/events", lambda v: f"/v1/jobs/{v.job}/events"),
    # prompts
    Case("GET", "/v1/prompts/{prompt_id}", lambda v: f"/v1/prompts/{v.prompt}"),
    Case(
        "PATCH",
        "/v1/prompts/{prompt_id}",
        lambda v: f"/v1/prompts/{v.prompt}",
        lambda v: {"title": "mine now"},
    ),
    Case("DELETE", "/v1/prompts/{prompt_id}", lambda v: f"/v1/prompts/{v.prompt}"),
    # packs and their icons
    Case("GET", "/v1/packs/{pack_id}", lambda v: f"/v1/packs/{v.pack}"),
    Case(
        "PATCH",
        "/v1/packs/{pack_id}",
        lambda v: f"/v1/packs/{v.pack}",
        lambda v: {"name": "mine now"},
    ),
    Case(
        "PATCH",  # Alice's pack, Bob's private image as its cover
        "/v1/packs/{pack_id}",
        lambda v: f"/v1/packs/{v.alice_pack}",
        lambda v: {"cover_image_id": v.private_image},
    ),
    Case("DELETE", "/v1/packs/{pack_id}", lambda v: f"/v1/packs/{v.pack}"),
    Case(
        "POST",  # Alice's image into Bob's pack
        "/v1/packs/{pack_id}/icons",
        lambda v: f"/v1/packs/{v.pack}/icons",
        lambda v: {"image_id": v.alice_image},
    ),
    Case(
        "POST",  # Bob's image into Alice's pack
        "/v1/packs/{pack_id}/icons",
        lambda v: f"/v1/packs/{v.alice_pack}/icons",
        lambda v: {"image_id": v.private_image},
    ),
    Case(
        "DELETE",
        "/v1/packs/{pack_id}/icons/{image_id}",
        lambda v: f"/v1/packs/{v.pack}/icons/{v.icon}",
    ),
    Case(
        "DELETE",  # Bob's icon, named under Alice's pack
        "/v1/packs/{pack_id}/icons/{image_id}",
        lambda v: f"/v1/packs/{v.alice_pack}/icons/{v.icon}",
    ),
    # administration: Alice is no administrator, so Bob's account and images are out of reach
    Case("GET", "/v1/admin/users/{user_id}", lambda v: f"/v1/admin/users/{BOB}", status=403),
    Case(
        "POST",
        "/v1/admin/users/{user_id}/credits",
        lambda v: f"/v1/admin/users/{BOB}/credits",
        lambda v: {"delta": -5, "reason": "borrowed"},
        status=403,
    ),
    Case(
        "DELETE",
        "/v1/admin/images/{image_id}",
        lambda v: f"/v1/admin/images/{v.public_image}",
        status=403,
    ),
    # Bob's public pack: anyone may read it (`READS`), only he may change it
    Case(
        "PATCH",
        "/v1/packs/{pack_id}",
        lambda v: f"/v1/packs/{v.public_pack}",
        lambda v: {"style_prompt": "mine now"},
    ),
    Case("DELETE", "/v1/packs/{pack_id}", lambda v: f"/v1/packs/{v.public_pack}"),
    Case(
        "POST",
        "/v1/packs/{pack_id}/icons",
        lambda v: f"/v1/packs/{v.public_pack}/icons",
        lambda v: {"image_id": v.alice_image},
    ),
    Case(
        "DELETE",
        "/v1/packs/{pack_id}/icons/{image_id}",
        lambda v: f"/v1/packs/{v.public_pack}/icons/{v.public_icon}",
    ),
    Case(
        "POST",
        "/v1/packs/{pack_id}/generations",
        lambda v: f"/v1/packs/{v.public_pack}/generations",
        lambda v: {"prompts": ["borrowed"]},
    ),
    Case(
        "POST",
        "/v1/generations",
        lambda v: "/v1/generations",
        _generation(pack_id=lambda v: v.public_pack),
    ),
    # a pack's sets of icons
    Case(
        "POST",
        "/v1/packs/{pack_id}/generations",
        lambda v: f"/v1/packs/{v.pack}/generations",
        lambda v: {"prompts": ["borrowed"]},
    ),
    Case(
        "GET",
        "/v1/packs/{pack_id}/generations/{set_id}",
        lambda v: f"/v1/packs/{v.pack}/generations/{v.pack_set}",
    ),
    Case(
        "GET",  # Bob's set, named under Alice's pack
        "/v1/packs/{pack_id}/generations/{set_id}",
        lambda v: f"/v1/packs/{v.alice_pack}/generations/{v.pack_set}",
    ),
    # a pack's export: Bob's pack is private (its icons are)
    Case("GET", "/v1/packs/{pack_id}/export", lambda v: f"/v1/packs/{v.pack}/export"),
    # stored files: a signed link opens only the key it was signed for
    Case("GET", "/files/{key}", _files_path, status=403),
    # API keys
    Case("GET", "/v1/api-keys/{key_id}", lambda v: f"/v1/api-keys/{v.api_key}"),
    Case("DELETE", "/v1/api-keys/{key_id}", lambda v: f"/v1/api-keys/{v.api_key}"),
    # outgoing-webhook endpoints
    Case(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}",
        lambda v: f"/v1/webhook-endpoints/{v.endpoint}",
    ),
    Case(
        "PATCH",
        "/v1/webhook-endpoints/{endpoint_id}",
        lambda v: f"/v1/webhook-endpoints/{v.endpoint}",
        lambda v: {"url": "https://8.8.8.8/borrowed", "enabled": False},
    ),
    Case(
        "DELETE",
        "/v1/webhook-endpoints/{endpoint_id}",
        lambda v: f"/v1/webhook-endpoints/{v.endpoint}",
    ),
    Case(
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}/secret",
        lambda v: f"/v1/webhook-endpoints/{v.endpoint}/secret",
    ),
    Case(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}/deliveries",
        lambda v: f"/v1/webhook-endpoints/{v.endpoint}/deliveries",
    ),
    # ids in a generation's body
    Case(
        "POST",
        "/v1/generations",
        lambda v: "/v1/generations",
        _generation(kind="edit", reference=lambda v: {"upload_key": v.upload_key}),
    ),
    Case(
        "POST",
        "/v1/generations",
        lambda v: "/v1/generations",
        _generation(kind="style", reference=lambda v: {"image_id": v.private_image}),
    ),
    Case(
        "POST",
        "/v1/generations",
        lambda v: "/v1/generations",
        _generation(kind="edit", reference=lambda v: {"image_id": v.icon}),
    ),
    Case(
        "POST",
        "/v1/generations",
        lambda v: "/v1/generations",
        _generation(pack_id=lambda v: v.pack),
    ),
]


# What Alice may read of Bob's: his public image and his public pack, its icons and export.
READS: list[Case] = [
    Case("GET", "/v1/images/{image_id}", lambda v: f"/v1/images/{v.public_image}", status=200),
    Case("GET", "/v1/packs/{pack_id}", lambda v: f"/v1/packs/{v.public_pack}", status=200),
    Case("GET", "/v1/feed", lambda v: f"/v1/feed?pack_id={v.public_pack}", status=200),
    Case(
        "GET",
        "/v1/packs/{pack_id}/export",
        lambda v: f"/v1/packs/{v.public_pack}/export",
        status=200,
    ),
]


def routes_with_ids(app: FastAPI | None = None) -> set[tuple[str, str]]:
    """(method, path template) of every operation whose path takes a parameter."""
    app = app or create_app(Settings(_env_file=None))
    return {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if "{" in path
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }


def uncovered(app: FastAPI | None = None) -> set[tuple[str, str]]:
    return routes_with_ids(app) - {(case.method, case.route) for case in CASES}


def test_every_route_with_an_id_has_an_idor_case() -> None:
    missing = uncovered()
    assert not missing, f"routes with an id and no IDOR case: {sorted(missing)}"


def test_a_new_route_with_an_id_and_no_case_is_noticed() -> None:
    app = create_app(Settings(_env_file=None))

    @app.put("/v1/things/{thing_id}", operation_id="test_put_thing")
    async def put_thing(thing_id: str) -> None: ...

    assert uncovered(app) == {("PUT", "/v1/things/{thing_id}")}


async def _ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in (statuses or (200, 201)), response.text
    body: dict[str, Any] = response.json()
    return body


async def _finished(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    response = await client.post(
        "/v1/generations",
        json={"prompt": "a private owl", **body},
        headers={**headers, "Prefer": "wait=10"},
    )
    job = await _ok(response)
    assert job["status"] == "completed", job
    image_id: str = job["image"]["id"]
    return image_id


async def _victim(client: httpx.AsyncClient, db: asyncpg.Connection, headers: Headers) -> Victim:
    alice, bob = headers(ALICE), headers(BOB)
    pack = (await _ok(await client.post("/v1/packs", json={"name": "Bob's"}, headers=bob)))["id"]
    private_image = await _finished(client, bob)
    public_image = await _finished(client, bob, visibility="public")
    icon = await _finished(client, bob, pack_id=pack)
    public_pack = (
        await _ok(await client.post("/v1/packs", json={"name": "Bob's too"}, headers=bob))
    )["id"]
    public_icon = await _finished(client, bob, visibility="public", pack_id=public_pack)
    pack_set = await _ok(
        await client.post(f"/v1/packs/{pack}/generations", json={"prompts": ["a"]}, headers=bob),
        202,
    )
    await finished_set(client, bob, f"/v1/packs/{pack}/generations/{pack_set['id']}")
    prompt = await _ok(await client.post("/v1/prompts", json={"prompt_text": "x"}, headers=bob))
    jobs = await _ok(await client.get("/v1/jobs", headers=bob))
    uploaded = await _ok(
        await client.post(
            "/v1/uploads", files={"file": ("a.png", image_bytes("PNG"), "image/png")}, headers=bob
        )
    )
    alice_pack = (await _ok(await client.post("/v1/packs", json={"name": "A"}, headers=alice)))[
        "id"
    ]
    alice_image = await _finished(client, alice)
    link = await _ok(
        await client.get(f"/v1/images/{alice_image}/download?redirect=false", headers=alice)
    )
    parts = urlsplit(link["url"])
    api_key = await _ok(await client.post("/v1/api-keys", json={"name": "b"}, headers=bob))
    endpoint = await _ok(
        await client.post(
            "/v1/webhook-endpoints",
            json={"url": "https://8.8.8.8/hook", "events": ["job.failed"]},
            headers=bob,
        ),
        201,
    )
    bob_key = await db.fetchval(
        "SELECT storage_key FROM generated_images WHERE id = $1::uuid", private_image
    )
    return Victim(
        private_image=private_image,
        public_image=public_image,
        icon=icon,
        prompt=prompt["id"],
        pack=pack,
        public_pack=public_pack,
        public_icon=public_icon,
        pack_set=pack_set["id"],
        job=jobs["items"][0]["id"],
        upload_key=uploaded["upload_key"],
        alice_image=alice_image,
        alice_pack=alice_pack,
        alice_signed_path=f"{parts.path}?{parts.query}",
        bob_private_key=bob_key,
        api_key=api_key["id"],
        endpoint=endpoint["id"],
    )


SNAPSHOT = {
    "generated_images": "SELECT * FROM generated_images ORDER BY id",
    "custom_prompts": "SELECT * FROM custom_prompts ORDER BY id",
    "icon_packs": "SELECT * FROM icon_packs ORDER BY id",
    "image_likes": "SELECT * FROM image_likes ORDER BY image_id, user_id",
    "jobs": "SELECT id, status, user_id FROM image_generation_jobs ORDER BY id",
    "users": "SELECT id, credits FROM users ORDER BY id",
    "api_keys": "SELECT id, user_id FROM api_keys ORDER BY id",
    "webhook_endpoints": (
        "SELECT id, user_id, url, events, secret, disabled_at FROM webhook_endpoints ORDER BY id"
    ),
}


async def _snapshot(db: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    return {name: [dict(r) for r in await db.fetch(sql)] for name, sql in SNAPSHOT.items()}


@pytest.fixture
async def victim_app(make_settings: Callable[..., Settings]) -> Any:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        yield app


async def test_another_users_ids_are_404_on_every_route_and_change_nothing(
    victim_app: FastAPI, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    transport = httpx.ASGITransport(app=victim_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atelier.test") as client:
        victim = await _victim(client, db, auth_headers)
        storage = victim_app.state.services.storage
        before = await _snapshot(db)
        alice = auth_headers(ALICE)

        for case in CASES:
            body = case.body(victim) if case.body else None
            response = await client.request(case.method, case.url(victim), json=body, headers=alice)
            problem = assert_problem(response, case.status)
            assert BOB not in response.text, (case, problem)
        for case in READS:  # allowed, and they change nothing either
            response = await client.request(case.method, case.url(victim), headers=alice)
            assert response.status_code == case.status, (case, response.text)

        assert await _snapshot(db) == before
        for key in (victim.bob_private_key, victim.upload_key):
            assert await storage.exists(key)
