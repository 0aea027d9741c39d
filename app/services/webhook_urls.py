"""Where outgoing webhooks may go: https only (http to loopback only when ENV=development),
and never to a private, loopback, link-local or reserved address unless
WEBHOOKS_ALLOW_PRIVATE=true. Checked at registration and again before every attempt, since
DNS may change; an attempt connects to the address its check approved (`check` returns it),
so a name that resolves to a public address for the check and to a private one a moment
later (DNS rebinding) cannot lead the sender inside."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from app.config import Settings
from app.errors import Unprocessable

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedUrl(Unprocessable):
    """An unprocessable URL (the `unprocessable` problem type, as the document lists it)."""

    title = "Webhook URL refused"


def _is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


async def lookup(host: str, port: int) -> list[str]:
    """The addresses DNS gives for `host` now (the system's resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _addresses(host: str, port: int) -> list[IpAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = await lookup(host, port)
    except OSError as exc:
        raise RefusedUrl(f"The host {host!r} does not resolve.") from exc
    return [ipaddress.ip_address(address.split("%")[0]) for address in found]


async def check(url: str, settings: Settings) -> str:
    """Raise RefusedUrl (422) unless `url` may receive webhooks now; the address to connect
    to, one of those this check approved (all of the host's addresses are checked)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedUrl("The URL is malformed.") from exc
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise RefusedUrl("The URL must be https://host/…")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("The URL must not carry credentials.")
    addresses = await _addresses(host, port)
    if not addresses:
        raise RefusedUrl(f"The host {host!r} does not resolve.")
    development = settings.env == "development"
    loopback = all(a.is_loopback for a in addresses)
    if parts.scheme == "http" and not (development and loopback):
        raise RefusedUrl("Webhooks are sent over https only (http to loopback in development).")
    if not (settings.webhooks_allow_private or (development and loopback)):
        refused = [str(a) for a in addresses if not _is_public(a)]
        if refused:
            raise RefusedUrl(
                f"The host {host!r} resolves to a private or reserved address ({refused[0]})."
            )
    return str(addresses[0])
