"""Liveness, readiness, metrics, and the dev JWKS."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from app.deps import Svc
from app.errors import NotFound, Unauthorized
from app.openapi import ANY_OPERATION, responses
from app.services import operations

router = APIRouter(tags=["operations"], responses=responses(*ANY_OPERATION))


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok"}, {"status": "ready"}]}
    )

    status: str


# Probed every few seconds by load balancers and orchestrators: the same bytes each time,
# without a model to validate and serialize per probe.
_UP = Health(status="ok").model_dump_json().encode()


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Response:
    """The process is up (says nothing about its dependencies)."""
    return Response(_UP, media_type="application/json")


@router.get("/readyz", operation_id="readyz", response_model=Health, responses=responses(503))
async def readyz(svc: Svc) -> Health:
    """Ready for traffic: the database answers and every migration on disk is applied."""
    await operations.check_ready(svc.pool)
    return Health(status="ready")


_metrics_bearer = HTTPBearer(auto_error=False, description="METRICS_TOKEN, when it is set.")


async def metrics_access(
    svc: Svc,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
) -> None:
    """/metrics on the API's port: absent when METRICS_PORT serves them on a port of their
    own; behind `Authorization: Bearer <METRICS_TOKEN>` when a token is set."""
    settings = svc.settings
    if settings.metrics_port is not None:
        raise NotFound(f"Metrics are served on port {settings.metrics_port}, not here.")
    if settings.metrics_token is None:
        return
    if credentials is None:
        raise Unauthorized("Send 'Authorization: Bearer <METRICS_TOKEN>'.", sent=False)
    expected = settings.metrics_token.get_secret_value().encode()
    # constant time, so the token cannot be guessed a byte at a time from response times
    if not hmac.compare_digest(expected, credentials.credentials.encode("utf-8", "replace")):
        raise Unauthorized("The metrics token is not valid.")


_METRICS_EXAMPLE = """\
# HELP atelier_credits_spent_total Credits debited for work, by kind.
# TYPE atelier_credits_spent_total counter
atelier_credits_spent_total{kind="generate"} 1027.0
atelier_credits_spent_total{kind="edit"} 88.0
"""


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    dependencies=[Depends(metrics_access)],
    # The token is asked for only when METRICS_TOKEN is set: `{}`, no requirement, otherwise.
    openapi_extra={"security": [{}]},
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"example": _METRICS_EXAMPLE}},
            "description": "Prometheus text",
        },
        **responses(401, 404),
    },
)
async def metrics(svc: Svc) -> Response:
    """Prometheus metrics (text exposition format). With METRICS_TOKEN set, send it as a
    bearer token; with METRICS_PORT set, they are served on that port instead (no token)."""
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


_JWKS_EXAMPLE = {
    "keys": [
        {
            "kty": "RSA",
            "key_ops": ["verify"],
            "n": "vDPcPMUj4x6lisiVDmUFSzGUNV3kJEqB9D_ImrLh9BC47M9hmx4Ey-rwpXOGLCmIZFcbP4r1WkflHXJj"
            "WQG9K7O7td3IhKrSKhKHMd3iQAgOPVb4V2Z4gHLEubhh0bg5xkY72ikOw2D0fUzrxGpvvDfw4vF-_uEgM9ig"
            "YIPLKPz2BbzRTh1y6ISBENrnaxeCHh2UQF2NBD3v9pkfVa_aZ8YnKvhELTmApRCpQ_Ih-xDZwJGIw_TAyhPL"
            "YewrwyTMmo4hCCxBCct450BMgPHMYJa0fxgxvQjWexDZwdnTrMB-gKkF-CNDsn0XLZeCEZZdDuMAhmrGEds4"
            "BSqaboaiZQ",
            "e": "AQAB",
            "kid": "dev-9ac874570d3d2aab",
            "use": "sig",
            "alg": "RS256",
        }
    ]
}


@router.get(
    "/.well-known/jwks.json",
    operation_id="dev_jwks",
    responses={
        200: {"content": {"application/json": {"example": _JWKS_EXAMPLE}}},
        **responses(404),
    },
    include_in_schema=True,
)
async def dev_jwks(svc: Svc) -> dict[str, object]:
    """The public keys of dev tokens (AUTH=dev only)."""
    if svc.jwks is None:
        raise NotFound("This service does not sign tokens (AUTH is not dev).")
    return svc.jwks
