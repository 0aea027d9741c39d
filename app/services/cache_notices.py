"""What an API process remembers briefly (users by id, API keys by hash), forgotten when the
database says it changed: triggers (migration 20261201003000) send a notice on
`atelier_forget` when a user's email or erasure changes, a user's row is deleted, or an API
key is deleted, whoever does it. After the hub reconnects, notices may have been missed, so
everything is forgotten; the entries' own short lifetimes remain the bound if a notice
never comes at all."""

from __future__ import annotations

import logging
from typing import Any

from app.services.api_keys import ApiKeys
from app.services.realtime import FORGET_CHANNEL, RESYNC, Hub
from app.services.users import Users

log = logging.getLogger("atelier.cache_notices")


async def forget_on_notice(hub: Hub, users: Users, keys: ApiKeys) -> None:
    """Run until cancelled: each notice drops its entry, a resync drops them all (so does a
    notice this cannot read, rather than leave the caches as they were)."""
    async with hub.subscribe(FORGET_CHANNEL) as notices:
        while True:
            notice = await notices.get()
            try:
                _forget(notice, users, keys)
            except Exception:
                log.exception("could not read a cache notice; forgetting everything")
                users.forget_all()
                keys.forget_all()


def _forget(notice: dict[str, Any] | None, users: Users, keys: ApiKeys) -> None:
    if notice is None:
        return
    if notice is RESYNC:  # the hub's own, after a reconnect or an overflow
        users.forget_all()
        keys.forget_all()
        return
    user, key = notice.get("user"), notice.get("api_key")
    if isinstance(user, str):
        users.forget(user)
    if isinstance(key, str):
        keys.forget(bytes.fromhex(key))
