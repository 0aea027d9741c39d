"""Where outgoing webhooks may go: https only (http to loopback only when ENV=development),
and never to a private, loopback, link-local or reserved address unless
WEBHOOKS_ALLOW_PRIVATE=true. Checked at registration and again before every attempt, and
enforced where the sender connects: its client's network backend (`CheckedBackend`)
resolves each connection's host itself and connects only to addresses it approves, so a
name that resolves to a public address for the check and to a private one a moment later
(DNS rebinding) cannot lead the sender inside. The sender connects directly, whatever
HTTPS_PROXY says (httpx reads it only for a client without a transport of its own), so this
check always applies."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx
from cachetools import TLRUCache

from app.config import Settings
from app.core.executors import DaemonPool
from app.errors import Unprocessable

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedUrl(Unprocessable):
    """An unprocessable URL (the `unprocessable` problem type, as the document lists it)."""

    title = "Webhook URL refused"


def _is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


# Webhook hosts are looked up in threads of their own. Anyone may register a name whose
# DNS answers slowly (up to the resolver's own timeout, ~30 s); the event loop's
# getaddrinfo runs in a small shared pool (the default executor, or libuv's four threads
# under uvloop) that the database pool's new connections and the providers' clients wait
# on too. Here a slow name holds one of these threads, one however many deliveries wait
# for it (lookups of one name at one time are shared), and delays only other webhooks'
# lookups; an attempt still ends at its deadline (outgoing.Sender). Daemon threads: a
# lookup still hanging never holds up the process's exit.
DNS_THREADS = 8
_resolver = DaemonPool(DNS_THREADS, "webhook-dns")
# Registrations look their host up in threads of their own. Anyone may register ever new
# names whose DNS never answers (none of them has rested yet, see below), and each such
# lookup holds its thread until the resolver gives up, long after the registration's own
# deadline: that can cost other registrations a 422 at their deadline, or a queued lookup
# that runs later, while deliveries, the sender's and the in-process worker's, find their
# threads free. One user's registration lookups run one at a time (webhook_endpoints).
REGISTRATION_DNS_THREADS = 4
REGISTRATIONS = DaemonPool(REGISTRATION_DNS_THREADS, "webhook-dns-registration")

# A name whose lookup failed after more than SLOW_LOOKUP_SECONDS is not looked up again for
# SLOW_NAME_COOLDOWN_SECONDS: until then it is refused at once, holding no thread. Without
# this, the endpoints of names whose DNS never answers (at most WEBHOOK_ENDPOINTS_MAX a
# user), their deliveries asked again as soon as each lookup gave up, could keep every
# thread busy and every other endpoint's deliveries waiting; now each holds a thread for
# ~10-30 s in five minutes. Only a failure counts, and only a slow one: a name that does not
# exist fails at once, and the system resolver gives up on a server that never answers
# only after resending (5 s each try, then the next server), so 4 s tells the two apart.
# A name that answers, however late (a lost packet resent, a shared host such as
# hooks.slack.com on a bad day), is never held back. While the resolver itself is down,
# the names that failed rest too: their attempts wait for the schedule's next one.
# Registrations each name a new host, so this does not bound them: each one's lookup may
# hold a thread until the resolver gives up (REGISTRATIONS keeps them off deliveries').
SLOW_LOOKUP_SECONDS = 4.0
SLOW_NAME_COOLDOWN_SECONDS = 300.0
_SLOW_NAMES_KEPT = 10_000


class SlowName(OSError):
    """A lookup refused without asking DNS: the name's last lookup failed only after long."""


class _SlowNames:
    """The names resting now, each until its rest ends (a TLRUCache: the lapsed and then the
    oldest go first when it is full); written from the lookup threads, hence the lock."""

    def __init__(self) -> None:
        self._resting: TLRUCache[str, bool] = TLRUCache(
            _SLOW_NAMES_KEPT, self._rest_ends, timer=time.monotonic
        )
        self._lock = threading.Lock()

    @staticmethod
    def _rest_ends(_host: str, _value: bool, now: float) -> float:
        return now + SLOW_NAME_COOLDOWN_SECONDS

    def cooling(self, host: str) -> bool:
        with self._lock:
            return host in self._resting

    def failed_after(self, host: str, seconds: float) -> None:
        if seconds > SLOW_LOOKUP_SECONDS:
            with self._lock:
                self._resting[host] = True


_slow_names = _SlowNames()


@dataclass
class _Lookup:
    answer: asyncio.Future[list[str]]
    waiting: int = 0


_in_flight: dict[tuple[str, int, DaemonPool], _Lookup] = {}


async def lookup(host: str, port: int, resolver: DaemonPool = _resolver) -> list[str]:
    """The addresses DNS gives for `host` now (the system's resolver, in `resolver`'s
    threads: the sender's, or REGISTRATIONS)."""
    if _slow_names.cooling(host):
        raise SlowName(f"the host {host!r} failed to resolve in time moments ago")
    key = (host, port, resolver)
    shared = _in_flight.get(key)
    if shared is None or shared.answer.get_loop() is not asyncio.get_running_loop():
        shared = _Lookup(asyncio.ensure_future(resolver.run(_getaddrinfo, host, port)))
        _in_flight[key] = shared
        shared.answer.add_done_callback(functools.partial(_landed, key))
    shared.waiting += 1
    try:
        # A caller that gives up (its deadline) leaves the lookup to the others waiting.
        return await asyncio.shield(shared.answer)
    finally:
        shared.waiting -= 1
        if shared.waiting == 0 and not shared.answer.done():
            shared.answer.cancel()  # no one waits: one still queued is never run


def _getaddrinfo(host: str, port: int) -> list[str]:
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        _slow_names.failed_after(host, time.monotonic() - started)
        raise
    return [str(info[4][0]) for info in infos]


def _landed(key: tuple[str, int, DaemonPool], done: asyncio.Future[list[str]]) -> None:
    shared = _in_flight.get(key)
    if shared is not None and shared.answer is done:
        del _in_flight[key]
    if not done.cancelled():
        done.exception()  # retrieved: every caller may have given up before it came


def _address(host: str) -> IpAddress | None:
    """`host` as an IP address; None when it is a name (to be looked up)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _addresses(host: str, port: int, resolver: DaemonPool) -> list[IpAddress]:
    if (address := _address(host)) is not None:
        return [address]
    try:
        found = await lookup(host, port, resolver)
    except SlowName as exc:
        rest = SLOW_NAME_COOLDOWN_SECONDS
        said = f"{rest / 60:g} minutes" if rest >= 60 else f"{rest:g} seconds"
        raise RefusedUrl(
            f"The host {host!r} did not resolve in time; it is not looked up again for up "
            f"to {said}."
        ) from exc
    except OSError as exc:
        raise RefusedUrl(f"The host {host!r} does not resolve.") from exc
    return [ipaddress.ip_address(address.split("%")[0]) for address in found]


# A host name as DNS can ask for it (after IDNA): labels of 1-63 letters, digits, `-` or
# `_` (names such as `_acme.example.com` exist), 253 characters at most, a final dot allowed.
_LABELS = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")


def _is_host_name(host: str) -> bool:
    return len(host.removesuffix(".")) <= 253 and _LABELS.fullmatch(host) is not None


def _split(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, its host as the sender will ask for it (httpx encodes a name with
    IDNA 2008) and its port; RefusedUrl when it is malformed, a host that can be no name
    (a space in it, an empty label) included: it is never looked up."""
    try:
        parts = urlsplit(url)
        port = (443 if parts.scheme == "https" else 80) if parts.port is None else parts.port
        host = httpx.URL(url).raw_host.decode("ascii") if parts.hostname else ""
    except (ValueError, httpx.InvalidURL) as exc:
        raise RefusedUrl("The URL is malformed.") from exc
    if host and _address(host) is None and not _is_host_name(host):
        raise RefusedUrl(f"The URL is malformed: {parts.hostname!r} is not a host name.")
    return parts, host, port


def names_an_address(url: str) -> bool:
    """Whether `url`'s host is an IP address, which `check` looks up nowhere (False for a
    malformed URL, which `check` refuses at once)."""
    try:
        _, host, _ = _split(url)
    except RefusedUrl:
        return False
    return _address(host) is not None


async def check(url: str, settings: Settings, resolver: DaemonPool = _resolver) -> None:
    """Raise RefusedUrl (422) unless `url` may receive webhooks now (its host looked up in
    `resolver`'s threads: REGISTRATIONS for a registration)."""
    parts, host, port = _split(url)
    if parts.scheme not in ("https", "http") or not host:
        raise RefusedUrl("The URL must be https://host/…")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("The URL must not carry credentials.")
    if port == 0:
        raise RefusedUrl("The URL's port must be 1 to 65535.")
    addresses = await _resolved(host, port, resolver)
    if parts.scheme == "http" and not _loopback_in_development(addresses, settings):
        raise RefusedUrl("Webhooks are sent over https only (http to loopback in development).")
    _refuse_private(host, addresses, settings)


async def approved(host: str, port: int, settings: Settings) -> list[IpAddress]:
    """The addresses `host` resolves to now, in DNS's order, if webhooks may go to them all;
    RefusedUrl otherwise."""
    addresses = await _resolved(host, port, _resolver)
    _refuse_private(host, addresses, settings)
    return addresses


async def _resolved(host: str, port: int, resolver: DaemonPool) -> list[IpAddress]:
    addresses = await _addresses(host, port, resolver)
    if not addresses:
        raise RefusedUrl(f"The host {host!r} does not resolve.")
    return addresses


def _loopback_in_development(addresses: list[IpAddress], settings: Settings) -> bool:
    return settings.env == "development" and all(a.is_loopback for a in addresses)


def _refuse_private(host: str, addresses: list[IpAddress], settings: Settings) -> None:
    if settings.webhooks_allow_private or _loopback_in_development(addresses, settings):
        return
    refused = [str(a) for a in addresses if not _is_public(a)]
    if refused:
        raise RefusedUrl(
            f"The host {host!r} resolves to a private or reserved address ({refused[0]})."
        )


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for the sender's connections: the host is resolved here,
    and the connection goes to the first approved address that answers. The URL, `Host`,
    TLS's server name (and so the certificate's check), the connection pool and cookies all
    stay with the name."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._network = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        ends = None if timeout is None else loop.time() + timeout
        try:
            addresses = await approved(host, port, self._settings)
        except RefusedUrl as exc:
            raise httpcore.ConnectError(exc.detail) from exc
        failed: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for left, address in zip(range(len(addresses), 0, -1), addresses, strict=True):
            # The connect timeout is shared out: an address that never answers leaves the
            # others their turn before the attempt's own deadline (outgoing.Sender).
            share = None if ends is None else max(ends - loop.time(), 0.0) / left
            try:
                return await self._network.connect_tcp(
                    str(address), port, share, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("Webhooks are not sent over Unix sockets.")

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with `CheckedBackend` under its connection pool. httpx takes no
    network backend, so the pool it built is replaced by the same one with it (httpx 0.28:
    `_pool`; tests/webhooks_out checks that connections really go through the backend)."""

    def __init__(self, settings: Settings) -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(settings),
        )
