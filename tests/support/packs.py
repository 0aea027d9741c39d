"""Packs made through the API, and a set of icons asked for and waited for."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.polling import wait_until


async def create_pack(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str = "Space",
    style_prompt: str | None = "flat pastel icons, thick outlines",
) -> str:
    response = await client.post(
        "/v1/packs", json={"name": name, "style_prompt": style_prompt}, headers=headers
    )
    assert response.status_code == 201, response.text
    pack_id: str = response.json()["id"]
    return pack_id


async def ask_for_set(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    pack_id: str,
    prompts: list[str],
    **fields: Any,
) -> httpx.Response:
    return await client.post(
        f"/v1/packs/{pack_id}/generations", json={"prompts": prompts, **fields}, headers=headers
    )


async def finished_set(
    client: httpx.AsyncClient, headers: dict[str, str], location: str
) -> dict[str, Any]:
    """Poll the set at `location` until every job has ended; returns it."""
    found: dict[str, Any] = {}

    async def finished() -> bool:
        response = await client.get(location, headers=headers)
        assert response.status_code == 200, response.text
        found.update(response.json())
        return bool(found["finished"])

    await wait_until(finished, f"the set at {location} to finish")
    return found


async def make_set(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    pack_id: str,
    prompts: list[str],
    **fields: Any,
) -> dict[str, Any]:
    """Ask for the set and wait until every job ended; every one must have completed."""
    response = await ask_for_set(client, headers, pack_id, prompts, **fields)
    assert response.status_code == 202, response.text
    done = await finished_set(client, headers, response.headers["location"])
    assert [job["status"] for job in done["jobs"]] == ["completed"] * len(prompts), done
    return done
