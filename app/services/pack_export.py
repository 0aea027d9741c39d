"""A pack as one ZIP, streamed: every icon as PNGs at fixed sizes and an ICO, and a manifest.

Memory stays flat whatever the pack's size: the rows are read first and the connection goes
back to the pool; then one icon at a time, its original is fetched from storage, its files
are rendered on the imaging pool and written to the archive, and the archive's bytes so far
are handed to the response before the next icon is fetched. `zipfile` writes to a stream
that cannot seek by putting each entry's sizes after its data (a data descriptor), which
every unzip tool reads.

Who may export: the owner, or anyone signed in when the pack is public (it has icons, and
every one of them is public). Another user's private pack is a 404, as everywhere.
A store that cannot be reached before the first byte is sent is a 503; one that fails
later can only cut the download short (the archive is then visibly incomplete). An icon
without a stored original (the mobile app's, saved as a URL) or whose object is gone is
left out and listed in the manifest's `skipped`.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.config import Settings
from app.db import images as images_db
from app.db import packs as packs_db
from app.errors import NotFound, ServiceUnavailable, Unprocessable
from app.services import icon_files, imaging
from app.services.storage.base import ObjectNotFound, Storage, StorageError

log = logging.getLogger("atelier.pack_export")

MEDIA_TYPE = "application/zip"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Export:
    filename: str
    chunks: AsyncIterator[bytes]


class _Sink:
    """A write-only stream that cannot seek: what zipfile writes is taken out chunk by chunk."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


@dataclass(frozen=True)
class _Skip:
    reason: str


async def open_export(
    pool: asyncpg.Pool,
    storage: Storage,
    decoders: imaging.Decoders,
    settings: Settings,
    pack_id: UUID,
    viewer: str,
) -> Export:
    """Check access and read the rows (then release the connection), fetch the first
    original (so a store that is down is a 503, not a broken download), and return the
    archive's stream."""
    async with pool.acquire() as conn:
        pack = await packs_db.get_readable(conn, pack_id, viewer)
        if pack is None:
            raise NotFound("No such pack.")
        icons = await images_db.pack_icons(
            conn,
            pack_id,
            only_public=pack["user_id"] != viewer,
            limit=settings.pack_export_max_icons + 1,
        )
    if len(icons) > settings.pack_export_max_icons:
        raise Unprocessable(
            f"This pack has more than {settings.pack_export_max_icons} icons, the most one "
            "export holds.",
            limit=settings.pack_export_max_icons,
        )
    first: bytes | _Skip | None = None
    if icons:
        try:
            first = await _original(storage, icons[0])
        except StorageError as exc:
            raise ServiceUnavailable("The image store cannot be reached; try again.") from exc
    name = icon_files.file_name(pack["name"], "pack")
    return Export(f"{name}.zip", _stream(pack, icons, first, storage, decoders))


async def _original(storage: Storage, icon: asyncpg.Record) -> bytes | _Skip:
    key = icon["storage_key"]
    if not key:
        return _Skip("no stored original (saved by the app as a link only)")
    try:
        return await storage.get(key)
    except ObjectNotFound:
        return _Skip("its stored original is gone")


def _entry(name: str, when: datetime, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.astimezone(UTC).timetuple()[:6])
    info.compress_type = compress
    info.external_attr = 0o644 << 16  # a plain file, readable by all, once unpacked
    return info


async def _stream(
    pack: asyncpg.Record,
    icons: Sequence[asyncpg.Record],
    first: bytes | _Skip | None,
    storage: Storage,
    decoders: imaging.Decoders,
) -> AsyncIterator[bytes]:
    sink = _Sink()
    archive = zipfile.ZipFile(sink, mode="w")
    names = icon_files.Names()
    listed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for index, icon in enumerate(icons):
        original, first = first, None  # the prefetched first original, then none held
        if original is None:
            try:
                original = await _original(storage, icon)
            except StorageError:
                log.warning("export of pack %s cut short: storage failed", pack["id"])
                raise  # the response ends early; the client sees an incomplete download
        about = {"image_id": str(icon["id"]), "prompt": icon["prompt"]}
        if isinstance(original, _Skip):
            skipped.append({**about, "reason": original.reason})
            continue
        try:
            files = await decoders.run(icon_files.render, original)
        except (imaging.NotAnImage, imaging.TooManyPixels) as exc:
            skipped.append({**about, "reason": f"its stored original is not usable: {exc}"})
            continue
        del original
        name = names.take(icon_files.file_name(icon["prompt"], f"icon-{index + 1}"))
        paths: dict[str, str] = {}
        for size, data in files.pngs.items():
            paths[str(size)] = f"png/{size}/{name}.png"
            archive.writestr(_entry(paths[str(size)], icon["created_at"], zipfile.ZIP_STORED), data)
        paths["ico"] = f"ico/{name}.ico"
        archive.writestr(_entry(paths["ico"], icon["created_at"], zipfile.ZIP_STORED), files.ico)
        source = [files.width, files.height]
        listed.append({"name": name, **about, "source": source, "files": paths})
        yield sink.take()
    now = datetime.now(UTC)
    manifest = {
        "version": MANIFEST_VERSION,
        "pack": {"id": str(pack["id"]), "name": pack["name"], "style_prompt": pack["style_prompt"]},
        "exported_at": now.isoformat(),
        "png_sizes": list(icon_files.PNG_SIZES),
        "ico_sizes": list(icon_files.ICO_SIZES),
        "icons": listed,
        "skipped": skipped,
    }
    text = json.dumps(manifest, ensure_ascii=False, indent=2)
    archive.writestr(_entry("manifest.json", now, zipfile.ZIP_DEFLATED), text.encode())
    archive.close()
    yield sink.take()
