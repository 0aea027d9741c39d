"""Generations, their jobs, their live progress, and the uploads they start from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.core import messages
from app.deps import (
    Caller,
    Conn,
    CurrentUser,
    JsonBodyRoute,
    StreamUser,
    Svc,
    rate_limited,
    sent_once,
)
from app.errors import NotFound, UnsupportedMediaType
from app.openapi import (
    ANY_OPERATION,
    IDEMPOTENCY_KEY_SCHEMA,
    UNPARSABLE_BODY,
    header_docs,
    multipart_body,
    responses,
    sse_events,
    with_headers,
)
from app.schemas.common import Cursor, Limit
from app.schemas.events import JobEvent
from app.schemas.generations import GenerationCreate, Job, JobPage, JobStatus, Upload
from app.services import generations, uploads
from app.services.realtime import JOBS_CHANNEL, RESYNC

router = APIRouter(
    prefix="/v1",
    tags=["generation"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)


MULTIPART = "multipart/form-data"
_RATE_LIMIT_HEADERS = header_docs(
    RateLimit_Limit="Requests of this kind allowed per window (per user)",
    RateLimit_Remaining="Requests left in the current window",
    RateLimit_Reset="Seconds until the oldest counted request leaves the window",
    RateLimit_Policy="The limit and its window in seconds, such as `30;w=60`",
)
_JOB_HEADERS = {
    **header_docs(required=True, Location="The job: `/v1/jobs/{id}`"),
    **header_docs(
        Idempotent_Replayed="`true` when an earlier request with this `Idempotency-Key` made "
        "the job",
        Preference_Applied="`wait=N` when the request waited for the job (`Prefer: wait=N`)",
    ),
    **_RATE_LIMIT_HEADERS,
}
_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        **responses(429)[429],
        "description": "Over the caller's rate limit: nothing was charged, queued or stored",
        "headers": {
            **header_docs(Retry_After="Seconds to wait before trying again"),
            **_RATE_LIMIT_HEADERS,
        },
    }
}


@router.post(
    "/generations",
    operation_id="create_generation",
    status_code=202,
    response_model=Job,
    responses={
        200: {
            "model": Job,
            "description": "The job has ended: within `Prefer: wait`, or it is a replay "
            "(`Idempotency-Key`) of one that had (a replay of an unfinished job is a 202)",
            "headers": _JOB_HEADERS,
        },
        202: {"headers": _JOB_HEADERS},
        **responses(400, 415),  # a body that is not JSON is refused before it is counted
        **with_headers(responses(401, 402, 404, 409, 422, 503), _RATE_LIMIT_HEADERS),
        **_RATE_LIMITED,
    },
)
async def create_generation(
    body: GenerationCreate,
    who: Caller,
    svc: Svc,
    request: Request,
    response: Response,
    # Its length and characters are checked by generations.submit: a malformed key is a
    # 400 (a header, not the body), which Header(max_length=...) would turn into a 422.
    idempotency_key: Annotated[str | None, Header(json_schema_extra=IDEMPOTENCY_KEY_SCHEMA)] = None,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
) -> Job:
    """Charge the kind's cost and queue the job; 202 with `Location` (the job to follow).

    `Idempotency-Key`: the same key and body return the same job without a second charge.
    `Prefer: wait=N` (N ≤ 60): answer 200 with the finished job if it ends within N seconds.
    Per-user rate limit (`RATE_LIMIT_GENERATIONS`): over it, 429 with `Retry-After`, nothing
    charged; a replay of an existing job is still answered.
    """
    sent_once(request, "Idempotency-Key")
    answer = await generations.submit(
        svc, who, body, idempotency_key=idempotency_key, prefer=prefer
    )
    response.status_code = answer.status_code
    response.headers.update(answer.headers)
    return answer.job


@router.get(
    "/jobs", operation_id="list_jobs", response_model=JobPage, responses=responses(400, 422)
)
async def list_jobs(
    user: CurrentUser,
    conn: Conn,
    svc: Svc,
    status: Annotated[
        list[JobStatus] | None,
        Query(description="Only jobs in these states: `status=pending&status=running`."),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> JobPage:
    """The caller's jobs, newest first: say, the ones still running after the app restarts."""
    return await generations.listing(
        conn,
        svc.storage,
        svc.settings,
        user.id,
        statuses=list(dict.fromkeys(status)) if status else None,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/jobs/{job_id}", operation_id="get_job", response_model=Job, responses=responses(404, 422)
)
async def get_job(job_id: UUID, user: CurrentUser, conn: Conn, svc: Svc) -> Job:
    """One of the caller's jobs (another user's job is a 404)."""
    return await generations.view(conn, svc.storage, svc.settings, job_id, user.id)


async def _own_job(job_id: UUID, user: StreamUser, svc: Svc) -> Job:
    async with svc.pool.acquire() as conn:
        return await generations.view(conn, svc.storage, svc.settings, job_id, user.id)


@router.get(
    "/jobs/{job_id}/events",
    operation_id="stream_job_events",
    response_class=EventSourceResponse,
    responses={
        200: sse_events("The job's events, until it has completed or failed", JobEvent),
        **responses(404, 422),
    },
)
async def stream_job_events(
    job: Annotated[Job, Depends(_own_job)], user: StreamUser, svc: Svc
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events (`event: job`, data: the job) until it completes or fails.

    Works whichever process runs the job: progress travels through PostgreSQL NOTIFY.
    """
    async with svc.hub.subscribe(JOBS_CHANNEL, str(job.id)) as sub:
        async with svc.pool.acquire() as conn:  # subscribed first: nothing slips between
            job = await generations.view(conn, svc.storage, svc.settings, job.id, user.id)
        yield ServerSentEvent(event="job", data=job, id=str(job.progress))
        while job.status not in generations.TERMINAL:
            event = await sub.get(30)
            if event is None:
                continue
            sent = (job.status, job.progress)
            state = (event.get("status"), event.get("progress"))
            if event is not RESYNC and state == sent:
                continue  # a change the first read already showed
            stale = event is not RESYNC and (event.get("progress") or 0) < job.progress
            if event is RESYNC or stale or state[0] != job.status:
                # Ask the database: after a gap, when the status changes (the final answer,
                # or a retry's error, attempt and time), or when an event would move
                # progress back (a late notification).
                async with svc.pool.acquire() as conn:
                    try:
                        job = await generations.view(
                            conn, svc.storage, svc.settings, job.id, user.id
                        )
                    except NotFound:
                        return
                if (job.status, job.progress) == sent:
                    continue
            else:  # progress only: no need to ask the database
                job = job.model_copy(
                    update={"status": event["status"], "progress": event["progress"]}
                )
            yield ServerSentEvent(event="job", data=job, id=str(job.progress))


_UPLOAD_FORM = multipart_body(
    "Body_create_upload",
    {
        "properties": {
            "file": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "title": "File",
                "description": "A PNG, JPEG or WEBP image",
            }
        },
        "type": "object",
        "required": ["file"],
        "title": "Body_create_upload",
    },
)


@asynccontextmanager
async def _file_part(request: Request, name: str) -> AsyncIterator[UploadFile]:
    """The file part `name` of the request's multipart body, read only now. A route that
    declared it as a `File` parameter would have it read before its dependencies: a body of
    up to MAX_UPLOAD_BYTES received and spooled for a caller then refused (401, 429).
    Reading fails as FastAPI's own reading does: a 413 (the body limit) or a 400 for
    multipart that does not parse (more than one file included), and a 400 for anything
    else, such as a client that left mid-body (no 500, no error logged). A body that is not
    multipart/form-data is a 415 before anything of it is read."""
    content_type = request.headers.get("content-type")
    if (content_type or "").partition(";")[0].strip().lower() != MULTIPART:
        raise UnsupportedMediaType.body(content_type, [MULTIPART])
    try:
        form = await request.form(max_files=1)
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc
    try:
        part = form.get(name)
        if not isinstance(part, UploadFile):
            kind, message = (
                ("missing", messages.missing_file_part(name))
                if part is None
                else ("value_error", "must be a file part, not a text field")
            )
            raise RequestValidationError([{"type": kind, "loc": ("body", name), "msg": message}])
        yield part
    finally:
        await form.close()


@router.post(
    "/uploads",
    operation_id="create_upload",
    status_code=201,
    response_model=Upload,
    responses={
        201: {"headers": _RATE_LIMIT_HEADERS},
        **with_headers(
            {**responses(400, 401, 413, 415, 422, 503), 400: {"description": UNPARSABLE_BODY}},
            _RATE_LIMIT_HEADERS,
        ),
        **_RATE_LIMITED,
    },
    dependencies=[Depends(rate_limited("uploads"))],
    openapi_extra=_UPLOAD_FORM,
)
async def create_upload(
    request: Request,
    user: StreamUser,  # no pooled connection held while the image is checked and stored
    svc: Svc,
) -> Upload:
    """Store an image to style or edit. Its type is judged by content; metadata is removed.

    Per-user rate limit (`RATE_LIMIT_UPLOADS`): over it, 429 with `Retry-After`, nothing stored.
    The body is read once the token is checked and the upload counted: a request refused
    for either is answered before its image is received (a 413 comes after the count).
    """
    async with _file_part(request, "file") as file:
        return await uploads.store(svc.settings, svc.storage, svc.decoders, user, file)
