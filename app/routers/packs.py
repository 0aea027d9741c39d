"""Icon packs and their icons."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import Caller, Conn, CurrentUser, JsonBodyRoute, StreamUser, Svc, sent_once
from app.openapi import ANY_OPERATION, IDEMPOTENCY_KEY_SCHEMA, header_docs, responses, with_headers
from app.schemas.common import Cursor, Limit
from app.schemas.gallery import Pack, PackCreate, PackDetail, PackIconAdd, PackPage, PackUpdate
from app.schemas.packs import PackGenerationCreate, PackGenerationSet
from app.services import pack_export, pack_sets, packs

router = APIRouter(
    prefix="/v1/packs",
    tags=["packs"],
    responses=responses(*ANY_OPERATION, 401, 503),
    route_class=JsonBodyRoute,
)
IconsLimit = Annotated[int, Query(ge=1, le=100, description="How many icons to include.")]
_RATE_LIMIT_HEADERS = header_docs(
    RateLimit_Limit="Generations allowed per window (per user)",
    RateLimit_Remaining="Generations left in the current window",
    RateLimit_Reset="Seconds until the oldest counted generation leaves the window",
    RateLimit_Policy="The limit and its window in seconds, such as `30;w=60`",
)
_SET_HEADERS = {
    **header_docs(required=True, Location="The set: `/v1/packs/{pack_id}/generations/{set_id}`"),
    **header_docs(
        Idempotent_Replayed="`true` when an earlier request with this `Idempotency-Key` made "
        "the set",
    ),
    **_RATE_LIMIT_HEADERS,
}
_SET_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        **responses(429)[429],
        "description": "Over the caller's generation rate limit (a set counts as one "
        "generation per icon): nothing was charged or queued",
        "headers": {
            **header_docs(Retry_After="Seconds to wait before trying again"),
            **_RATE_LIMIT_HEADERS,
        },
    }
}


@router.get("", operation_id="list_packs", response_model=PackPage, responses=responses(400, 422))
async def list_packs(
    user: CurrentUser,
    conn: Conn,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> PackPage:
    """The caller's packs, newest first."""
    return await packs.listing(conn, user.id, cursor, limit)


@router.post(
    "",
    operation_id="create_pack",
    status_code=201,
    response_model=Pack,
    responses={
        201: {"headers": header_docs(required=True, Location="The pack")},
        **responses(422),
    },
)
async def create_pack(body: PackCreate, user: CurrentUser, conn: Conn, response: Response) -> Pack:
    """Start a pack; its style prompt goes with every generation into it."""
    pack = await packs.create(conn, user.id, body)
    response.headers["Location"] = f"/v1/packs/{pack.id}"
    return pack


@router.get(
    "/{pack_id}", operation_id="get_pack", response_model=PackDetail, responses=responses(404, 422)
)
async def get_pack(
    pack_id: UUID, user: CurrentUser, conn: Conn, svc: Svc, icons_limit: IconsLimit = 50
) -> PackDetail:
    """A pack with its newest icons: one of the caller's, or anyone's public pack (it has
    icons, and every one of them is public: the packs anyone signed in may export).

    Another user's private pack is a 404. Changing a pack, its icons or generating into it
    stays its owner's alone, public or not.
    """
    return await packs.detail(conn, svc.storage, svc.settings, pack_id, user.id, icons_limit)


@router.patch(
    "/{pack_id}", operation_id="update_pack", response_model=Pack, responses=responses(404, 422)
)
async def update_pack(pack_id: UUID, body: PackUpdate, user: CurrentUser, conn: Conn) -> Pack:
    """Rename it, change its style prompt or its cover (one of the caller's images)."""
    return await packs.update(conn, pack_id, user.id, body)


@router.delete(
    "/{pack_id}",
    operation_id="delete_pack",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def delete_pack(pack_id: UUID, user: CurrentUser, conn: Conn) -> Response:
    """Delete the pack; its icons stay in the caller's gallery."""
    await packs.delete(conn, pack_id, user.id)
    return Response(status_code=204)


@router.post(
    "/{pack_id}/icons",
    operation_id="add_pack_icon",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def add_pack_icon(
    pack_id: UUID, body: PackIconAdd, user: CurrentUser, conn: Conn
) -> Response:
    """File one of the caller's images into the pack."""
    await packs.add_icon(conn, pack_id, user.id, body.image_id)
    return Response(status_code=204)


@router.delete(
    "/{pack_id}/icons/{image_id}",
    operation_id="remove_pack_icon",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
)
async def remove_pack_icon(
    pack_id: UUID, image_id: UUID, user: CurrentUser, conn: Conn
) -> Response:
    """Take an icon out of the pack (it stays in the gallery)."""
    await packs.remove_icon(conn, pack_id, user.id, image_id)
    return Response(status_code=204)


@router.post(
    "/{pack_id}/generations",
    operation_id="create_pack_generations",
    status_code=202,
    response_model=PackGenerationSet,
    responses={
        200: {
            "model": PackGenerationSet,
            "description": "A replay (`Idempotency-Key`) of a set whose jobs have all ended",
            "headers": _SET_HEADERS,
        },
        202: {"description": "Charged and queued: one job per prompt", "headers": _SET_HEADERS},
        **responses(400, 415),  # a body that is not JSON is refused before it is counted
        **with_headers(responses(401, 402, 404, 422, 503), _RATE_LIMIT_HEADERS),
        **_SET_RATE_LIMITED,
    },
)
async def create_pack_generations(
    pack_id: UUID,
    body: PackGenerationCreate,
    who: Caller,
    svc: Svc,
    request: Request,
    response: Response,
    # checked by the service: a malformed key is a 400, as for POST /v1/generations
    idempotency_key: Annotated[str | None, Header(json_schema_extra=IDEMPOTENCY_KEY_SCHEMA)] = None,
) -> PackGenerationSet:
    """Icons for the pack, one job per prompt (1 to 24), in one request.

    Each icon costs one generation. All of them are charged in one statement: with too few
    credits for the whole set, 402 and nothing is created. Every job gets the pack's style
    prompt and a few of its icons as references, and is filed into the pack when done; a
    job that fails is refunded alone. 202 with the jobs and `Location` (the set, to poll).
    `Idempotency-Key`: the same key and body return the same set; another body is a 422.
    The rate limit (`RATE_LIMIT_GENERATIONS`) counts the set as one generation per icon.
    """
    sent_once(request, "Idempotency-Key")
    answer = await pack_sets.submit(svc, who, pack_id, body, idempotency_key=idempotency_key)
    response.status_code = answer.status_code
    response.headers.update(answer.headers)
    return answer.set


@router.get(
    "/{pack_id}/generations/{set_id}",
    operation_id="get_pack_generations",
    response_model=PackGenerationSet,
    responses=responses(404, 422),
)
async def get_pack_generations(
    pack_id: UUID, set_id: UUID, user: CurrentUser, conn: Conn, svc: Svc
) -> PackGenerationSet:
    """A set of icons asked for together, as its jobs are now (`finished` once all ended).

    A 404 once its pack is deleted; its jobs stay readable at /v1/jobs/{job_id}.
    """
    return await pack_sets.view(conn, svc.storage, svc.settings, user.id, pack_id, set_id)


@router.get(
    "/{pack_id}/export",
    operation_id="export_pack",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A ZIP: `png/{size}/{name}.png` for sizes 16, 32, 64, 128, 256 and "
            "512, `ico/{name}.ico` (16, 32, 48 and 64), and `manifest.json` naming each icon "
            "by its prompt",
            "content": {pack_export.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "headers": header_docs(
                required=True, Content_Disposition='`attachment; filename="<pack>.zip"`'
            ),
        },
        **responses(404, 422, 503),
    },
)
async def export_pack(
    pack_id: UUID,
    user: StreamUser,  # no pooled connection held while the archive streams
    svc: Svc,
    format: Annotated[Literal["zip"], Query(description="The archive's format.")] = "zip",
) -> StreamingResponse:
    """The pack's icons as a ZIP, streamed as it is built, from the stored originals.

    Your own packs, and public ones (every icon in them public) of anyone else.
    """
    export = await pack_export.open_export(
        svc.pool, svc.storage, svc.decoders, svc.settings, pack_id, user.id
    )
    return StreamingResponse(
        export.chunks,
        media_type=pack_export.MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Cache-Control": "private, no-store",
        },
    )
