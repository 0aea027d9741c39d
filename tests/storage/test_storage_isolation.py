"""A store that hangs holds up storage work only: token checks and reads keep answering.

Storage calls run in a bounded pool of their own (STORAGE_WORKERS) and presigning runs on
the loop, so R2 calls that never come back cannot occupy the threads that token
verification uses, nor delay the image listing's presigned URLs. Here more calls hang than
the default executor has threads (min(32, CPUs + 4)), as many as a burst of uploads would.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable

import asyncpg
import psutil

from app.config import Settings
from app.main import create_app
from tests.fakes.running import running
from tests.fakes.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, SilentEndpoint
from tests.support.polling import wait_until

Headers = Callable[..., dict[str, str]]
HUNG_CALLS = min(32, (os.cpu_count() or 1) + 4) + 4
STORAGE_WORKERS = 4
# Far below the hung calls' own timeout (60 s): a request queued behind them would miss it.
PROMPT_SECONDS = 15.0


def connections_to(port: int) -> int:
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port
    )


async def test_token_checks_and_reads_answer_while_storage_calls_hang(
    make_settings: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    with SilentEndpoint() as silent:
        settings = make_settings(
            worker_in_process=False,
            storage="r2",
            r2_endpoint=silent.endpoint,
            r2_bucket_name="atelier-test",
            r2_access_key_id=ACCESS_KEY_ID,
            r2_secret_access_key=SECRET_ACCESS_KEY,
            storage_timeout_seconds=60,
            storage_workers=STORAGE_WORKERS,
        )
        app = create_app(settings)
        async with running(app) as client:
            owner = auth_headers("user_owner")
            assert (await client.get("/v1/me", headers=owner)).status_code == 200
            await db.execute(
                """
                INSERT INTO generated_images (id, user_id, image_url, prompt, storage_key)
                VALUES ($1, 'user_owner', 'x', 'a kept image', 'generations/kept.png')
                """,
                uuid.uuid4(),
            )
            storage = app.state.services.storage
            hung = [
                asyncio.create_task(storage.exists(f"uploads/u/{i}.png")) for i in range(HUNG_CALLS)
            ]
            port = int(silent.endpoint.rpartition(":")[2])
            await wait_until(
                lambda: connections_to(port) >= STORAGE_WORKERS, "storage calls to hang"
            )

            async with asyncio.timeout(PROMPT_SECONDS):
                # New tokens (new users): each is verified (RSA) and the user created.
                newcomers = [
                    client.get("/v1/me", headers=auth_headers(f"user_new_{i}")) for i in range(8)
                ]
                answers = await asyncio.gather(
                    *newcomers,
                    client.get("/v1/images", headers=owner),
                    client.get("/v1/me", headers=owner),
                )
            assert not any(task.done() for task in hung)  # they were hanging all along

            for task in hung:
                task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)

    assert [answer.status_code for answer in answers] == [200] * len(answers)
    [image] = answers[-2].json()["items"]
    assert "X-Amz-Signature=" in image["image_url"]  # presigned while the store hung
