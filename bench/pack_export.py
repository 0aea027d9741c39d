"""Exporting a 24-icon pack as a ZIP: how long it takes and how much the server's RSS grows.

`atelier serve` runs in a process of its own (PROVIDER=local, its in-process worker on).
A pack is filled with one `POST /v1/packs/{id}/generations` of `--icons` prompts and waited
for; then `GET /v1/packs/{id}/export?format=zip` is streamed `--rounds` times while a thread
samples the server's RSS every 10 ms. Growth is the peak during the export minus the RSS
just before it. The archive is checked (every entry's CRC, the entry count).

`--original-side N` replaces each stored original with N x N RGBA noise (PNG, the largest a
PNG of that size gets) before exporting: the local provider draws 512 x 512 pictures that
compress well, Gemini answers up to 1024 x 1024 and more.

    python -m bench.pack_export [--icons 24] [--rounds 3] [--original-side 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/pack_export.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (  # noqa: E402
    ATELIER,
    BenchDatabase,
    Child,
    bench_database,
    child_env,
    connect,
    free_port,
    machine_line,
    rss_mib,
    server_facts,
    users_with_tokens,
    wait_ready,
)
from bench.upload_bombs import RssSampler  # noqa: E402

DEADLINE = 300.0  # a guard against hanging, not a measurement
FILES_PER_ICON = 7  # six PNGs and an ICO


def noise_png(side: int) -> bytes:
    noise = Image.frombytes("RGBA", (side, side), os.urandom(side * side * 4))
    out = io.BytesIO()
    noise.save(out, "PNG", compress_level=1)
    return out.getvalue()


async def _fill_pack(client: httpx.AsyncClient, headers: dict[str, str], icons: int) -> str:
    pack = await client.post(
        "/v1/packs", json={"name": "Bench", "style_prompt": "flat icons"}, headers=headers
    )
    pack.raise_for_status()
    pack_id: str = pack.json()["id"]
    prompts = [f"bench icon number {n}" for n in range(icons)]
    started = time.perf_counter()
    answer = await client.post(
        f"/v1/packs/{pack_id}/generations", json={"prompts": prompts}, headers=headers
    )
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + DEADLINE
    while True:
        state = (await client.get(answer.headers["location"], headers=headers)).json()
        if state["finished"]:
            break
        assert time.monotonic() < deadline, "the set never finished"
        await asyncio.sleep(0.1)
    statuses = {job["status"] for job in state["jobs"]}
    assert statuses == {"completed"}, statuses
    print(f"set of {icons} icons: accepted and completed in {time.perf_counter() - started:.1f} s")
    return pack_id


async def _replace_originals(db: BenchDatabase, pack_id: str, side: int) -> None:
    conn = await connect(db.url)
    try:
        keys = [
            r["storage_key"]
            for r in await conn.fetch(
                "SELECT storage_key FROM generated_images WHERE pack_id = $1::uuid", pack_id
            )
        ]
    finally:
        await conn.close()
    for key in keys:
        (db.data_dir / "objects" / key).write_bytes(noise_png(side))
    print(f"replaced {len(keys)} originals with {side}x{side} RGBA noise")


async def _export(
    server: Child, client: httpx.AsyncClient, headers: dict[str, str], pack_id: str, icons: int
) -> dict[str, Any]:
    before, _ = rss_mib(server.pid)
    body = bytearray()
    first_byte: float | None = None
    with RssSampler(server.pid) as sampler:
        started = time.perf_counter()
        async with client.stream(
            "GET", f"/v1/packs/{pack_id}/export?format=zip", headers=headers
        ) as response:
            assert response.status_code == 200, await response.aread()
            async for chunk in response.aiter_raw():
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                body += chunk
        total = time.perf_counter() - started
    await asyncio.sleep(1)
    after, _ = rss_mib(server.pid)
    archive = zipfile.ZipFile(io.BytesIO(bytes(body)))
    assert archive.testzip() is None
    assert len(archive.namelist()) == icons * FILES_PER_ICON + 1
    return {
        "seconds": total,
        "first_byte_ms": (first_byte or 0.0) * 1000,
        "mib": len(body) / 2**20,
        "rss_before": before,
        "rss_peak": sampler.peak,
        "growth": sampler.peak - before,
        "rss_after_1s": after,
    }


async def _run(
    db: BenchDatabase, server: Child, base_url: str, token: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=DEADLINE) as client:
        pack_id = await _fill_pack(client, headers, args.icons)
        if args.original_side:
            await _replace_originals(db, pack_id, args.original_side)
        return [
            await _export(server, client, headers, pack_id, args.icons) for _ in range(args.rounds)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pack_export")
    parser.add_argument("--icons", type=int, default=24, help="icons in the pack (1 to 24)")
    parser.add_argument("--rounds", type=int, default=3, help="exports, one after another")
    parser.add_argument(
        "--original-side", type=int, default=0, help="replace originals with N x N noise"
    )
    args = parser.parse_args(argv)
    with bench_database() as db:
        facts = asyncio.run(server_facts(db.url))
        print(machine_line())
        print(f"PostgreSQL {facts['server']} ({'embedded' if db.embedded else 'configured'})")
        [token] = asyncio.run(users_with_tokens(db, ["export_bench"]))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = child_env(
            db, PROVIDER="local", PUBLIC_BASE_URL=base_url, RATE_LIMIT_GENERATIONS="100/minute"
        )
        server = Child([str(ATELIER), "serve", "--port", str(port)], env, db.workdir, "serve")
        try:
            wait_ready(server, base_url)
            idle, _ = rss_mib(server.pid)
            print(f"server RSS once ready: {idle:.0f} MiB")
            rows = asyncio.run(_run(db, server, base_url, token, args))
            _, hwm = rss_mib(server.pid)
            print(f"server peak RSS over the whole run (VmHWM): {hwm:.0f} MiB")
        finally:
            server.stop()
    print()
    print(
        f"{'export':<8} {'time':>7} {'1st byte':>9} {'archive':>9} {'RSS before':>10} "
        f"{'peak':>6} {'growth':>7} {'after 1s':>8}"
    )
    for n, row in enumerate(rows, 1):
        print(
            f"#{n:<7} {row['seconds']:>6.2f}s {row['first_byte_ms']:>7.0f}ms "
            f"{row['mib']:>6.1f}MiB {row['rss_before']:>7.0f}MiB {row['rss_peak']:>4.0f}MiB "
            f"{row['growth']:>5.1f}MiB {row['rss_after_1s']:>6.0f}MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
