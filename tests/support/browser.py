"""A real headless Chromium (Debian's package), driven over the Chrome DevTools Protocol.

No browser-automation library: the test speaks CDP itself over one WebSocket (`websockets`'
sync client), in flattened sessions: `Target.createTarget` opens a tab, `Target.attachToTarget`
gives a session id, and every command after that names it. Chromium writes the port it chose
(`--remote-debugging-port=0`) and the browser endpoint's path to `DevToolsActivePort` in its
profile directory.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.polling import DEADLINE_SECONDS, wait_until_sync

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
COMMAND_SECONDS = 60.0  # a guard for one CDP command (a script may await a whole job)


def chromium_binary() -> str | None:
    """Debian's `chromium`, when installed."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(AssertionError):
    """Chromium answered a command with an error, or a script in the page threw."""


class Browser:
    """One CDP connection to a running Chromium; `open_page` opens a tab to drive."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        seconds: float = COMMAND_SECONDS,
    ) -> dict[str, Any]:
        """Send one command and wait (at most `seconds`) for its answer."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {seconds:.0f}s")
            try:
                answer = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                raise BrowserError(f"no answer to {method} within {seconds:.0f}s") from None
            if answer.get("id") != message_id:
                continue  # an event: these tests enable no domain that sends any they need
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            result: dict[str, Any] = answer["result"]
            return result

    def open_page(self, url: str) -> Page:
        """A new tab showing `url`, once it has loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        page.navigate(url)
        return page


class Page:
    """One tab: navigate it and run scripts in it."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def navigate(self, url: str) -> None:
        """Show `url`, and wait until it has loaded."""
        navigated = self.browser.send("Page.navigate", {"url": url}, session=self.session)
        if navigated.get("errorText"):
            raise BrowserError(f"navigating to {url}: {navigated['errorText']}")

        def loaded() -> bool:
            try:
                shown = self.evaluate(
                    "document.readyState === 'complete' && location.href", seconds=5
                )
            except BrowserError:  # the old document went away while asked
                return False
            return bool(shown == url)

        wait_until_sync(loaded, f"{url} to load")

    def evaluate(self, expression: str, seconds: float = COMMAND_SECONDS) -> Any:
        """The value of `expression` in the page (a promise is awaited), as JSON gives it
        back; a script that throws raises BrowserError with what it threw."""
        answer = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
            seconds=seconds,
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"the page's script threw: {thrown}")
        return answer["result"].get("value")


def _devtools_address(profile: Path) -> str | None:
    try:
        port, path = (profile / "DevToolsActivePort").read_text().splitlines()[:2]
    except (OSError, ValueError):
        return None
    return f"ws://127.0.0.1:{port}{path}"


@contextmanager
def headless_chromium(binary: str) -> Iterator[Browser]:
    """Start `binary` headless with a fresh profile in a temporary directory; yield a CDP
    connection to it. The browser (its whole process group) and the profile go at the end."""
    profile = Path(tempfile.mkdtemp(prefix="atelier-chromium-"))
    log = (profile / "chromium.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # as root, and in containers without user namespaces
            "--remote-debugging-port=0",
            f"--user-data-dir={profile / 'profile'}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",  # no calls to Google from a test
            "--disable-component-update",
            "--disable-sync",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its renderers and helpers share its process group
    )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"chromium exited with {process.returncode}:\n"
                    + (profile / "chromium.log").read_text(errors="replace")[-4000:]
                )
            return _devtools_address(profile / "profile") is not None

        wait_until_sync(listening, "chromium to open its DevTools port")
        address = _devtools_address(profile / "profile")
        assert address is not None
        with connect(address, max_size=None, open_timeout=DEADLINE_SECONDS) as ws:
            yield Browser(ws)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the browser's process group; then SIGKILL to whatever of it is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
