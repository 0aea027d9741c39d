"""Liveness, readiness, metrics, and the dev JWKS."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.db import migrate
from app.deps import Svc
from app.errors import NotFound, ServiceUnavailable, responses

router = APIRouter(tags=["operations"])
log = logging.getLogger("atelier.health")


class Health(BaseModel):
    status: str


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (says nothing about its dependencies)."""
    return Health(status="ok")


@router.get("/readyz", operation_id="readyz", response_model=Health, responses=responses(503))
async def readyz(svc: Svc) -> Health:
    """Ready for traffic: the database answers and every migration on disk is applied."""
    try:
        async with asyncio.timeout(3):
            async with svc.pool.acquire() as conn:
                todo = await migrate.pending(conn)
    except (OSError, TimeoutError, migrate.MigrationError) as exc:
        log.warning("not ready: %s", exc)
        raise ServiceUnavailable(f"Database not ready: {exc}") from exc
    except Exception as exc:  # asyncpg raises many kinds; any of them means not ready
        log.warning("not ready: %r", exc)
        raise ServiceUnavailable("Database not ready.") from exc
    if todo:
        names = ", ".join(f"{m.version}_{m.name}" for m in todo)
        raise ServiceUnavailable(f"Migrations not applied: {names}. Run `atelier migrate`.")
    return Health(status="ready")


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(svc: Svc) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/.well-known/jwks.json",
    operation_id="dev_jwks",
    responses=responses(404),
    include_in_schema=True,
)
async def dev_jwks(svc: Svc) -> dict[str, object]:
    """The public keys of dev tokens (AUTH=dev only)."""
    if svc.jwks is None:
        raise NotFound("This service does not sign tokens (AUTH is not dev).")
    return svc.jwks
