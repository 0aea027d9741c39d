"""What Clerk's identity webhooks do, as the `clerk` handler of app.services.webhooks.

Clerk sends them through Svix; `verified_event` checks the Svix signature and timestamp
(five minutes' tolerance) before anything is stored, and the event is stored once by its
`svix-id`.

- `user.created`: the users row with its signup grant, unless it exists (a first request
  may have come first: the grant is made once either way). An erased id stays erased.
- `user.updated`: the row's email follows the primary address. With `CLERK_SECRET_KEY` set
  the address is read again from Clerk's Backend API, so an older event that arrives late
  cannot put back an address the user has since replaced.
- `user.deleted`: the account is erased (app.services.accounts.erase), its Stripe
  customer (and so its subscriptions) deleted first. Stripe out of reach (nothing is erased
  then) or objects the store could not delete fail the event, so Svix delivers it again (or
  `atelier webhooks replay` runs it) and erasing again retries them.

The account functions own their transactions, and erasure deletes stored objects after its
commit without holding a connection, so they run in `prepare` (which holds no connection)
rather than inside the event's transaction; each is idempotent, so a duplicate delivery
racing the first repeats nothing. `apply` has nothing left to write.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from svix.webhooks import Webhook, WebhookVerificationError

from app.config import Settings
from app.errors import BadRequest, NotFound, ServiceUnavailable
from app.services import accounts
from app.services.billing import StripeApi
from app.services.storage.base import Storage
from app.services.users import ClerkDirectory, Users, primary_email
from app.services.webhooks import Event

log = logging.getLogger("atelier.clerk.webhooks")

MAX_USER_ID_LENGTH = 255
SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")


class ClerkEventError(Exception):
    """An event that could not be applied completely (kept, retried, replayable)."""


def verified_event(settings: Settings, payload: bytes, headers: dict[str, str]) -> Event:
    """The event in `payload` once its Svix headers prove Clerk signed it with
    CLERK_WEBHOOK_SECRET within the last five minutes; BadRequest otherwise."""
    if settings.clerk_webhook_secret is None:
        raise ServiceUnavailable("Clerk webhooks are not configured.")
    svix = {name: headers.get(name, "") for name in SVIX_HEADERS}
    try:
        Webhook(settings.clerk_webhook_secret.get_secret_value()).verify(payload, svix)
        event = json.loads(payload)
    except (WebhookVerificationError, ValueError) as exc:
        # ValueError: a body that is not UTF-8 or not JSON (Clerk never signs such a thing)
        raise BadRequest("The svix-signature header does not verify this body.") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        raise BadRequest("The body is not a Clerk event (type and data).")
    return Event("clerk", svix["svix-id"], event["type"], event)


def _user_id(data: dict[str, Any]) -> str:
    user_id = data.get("id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise ClerkEventError("The event names no usable user id.")
    return user_id


class ClerkEvents:
    def __init__(
        self,
        pool: asyncpg.Pool,
        storage: Storage,
        users: Users,
        directory: ClerkDirectory,
        stripe: StripeApi | None,
    ) -> None:
        self._pool = pool
        self._stripe = stripe
        self._storage = storage
        self._users = users
        self._directory = directory

    async def prepare(self, event: Event) -> object:
        data: dict[str, Any] = event.payload["data"]
        if event.type == "user.created":
            user = await accounts.ensure_user(
                self._pool, self._users, _user_id(data), primary_email(data)
            )
            if user is None:
                log.info("user.created for erased id %s: left erased", data.get("id"))
        elif event.type == "user.updated":
            await self._updated(_user_id(data), data)
        elif event.type == "user.deleted":
            await self._deleted(_user_id(data))
        return None

    async def apply(self, conn: asyncpg.Connection, event: Event, prepared: object) -> None:
        return None  # prepare did the work (see the module's docstring)

    async def _updated(self, user_id: str, data: dict[str, Any]) -> None:
        # Clerk's current address when the Backend API can be asked; the event's otherwise.
        email = await self._directory.email(user_id) or primary_email(data)
        if email is None:
            log.info("user.updated for %s carries no email address: nothing to change", user_id)
            return
        try:
            await accounts.update_email(self._pool, self._users, user_id, email)
        except NotFound:
            # Unknown here (created before this endpoint existed, or erased): create it
            # unless erased, as user.created would.
            await accounts.ensure_user(self._pool, self._users, user_id, email)

    async def _deleted(self, user_id: str) -> None:
        erasure = await accounts.erase(
            self._pool, self._storage, self._users, user_id, self._stripe
        )
        if erasure.objects_left:
            raise ClerkEventError(
                f"{len(erasure.objects_left)} stored object(s) of {user_id} could not be "
                "deleted yet; the account's data is erased and a retry deletes them"
            )
