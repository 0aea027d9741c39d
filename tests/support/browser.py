"""A real headless Chromium (Debian's package), driven over the Chrome DevTools Protocol.

No browser-automation library: the test speaks CDP itself over one WebSocket (`websockets`'
sync client), in flattened sessions: `Target.createTarget` opens a tab, `Target.attachToTarget`
gives a session id, and every command after that names it. Chromium writes the port it chose
(`--remote-debugging-port=0`) and the browser endpoint's path to `DevToolsActivePort` in its
profile directory.

Chromium keeps its singleton socket in a directory of its own under `$TMPDIR`
(`org.chromium.Chromium.XXXXXX`), which it removes only when it exits cleanly: it is started
with `TMPDIR` inside the temporary directory that holds its profile, asked to exit with
`Browser.close`, and only signalled when it does not; the whole directory goes at the end.
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

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.polling import DEADLINE_SECONDS, wait_until_sync

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
COMMAND_SECONDS = 60.0  # a guard for one CDP command (a script may await a whole job)
EXIT_SECONDS = 10.0  # for Chromium to exit when asked, then after each signal


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

    def __init__(self, ws: ClientConnection, user_data_dir: Path) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.user_data_dir = user_data_dir

    def singleton_dir(self) -> Path:
        """The directory Chromium keeps its singleton socket in (the profile links to it)."""
        return Path(os.readlink(self.user_data_dir / "SingletonSocket")).parent

    def close(self) -> None:
        """Ask Chromium to exit, so it removes what it keeps outside its profile; it may go
        before answering."""
        try:
            self.send("Browser.close", seconds=EXIT_SECONDS)
        except (BrowserError, ConnectionClosed):
            pass  # gone already, or it will be signalled

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
    connection to it. At the end the browser is asked to exit (then signalled, its whole
    process group), and the temporary directory goes, whatever happened before."""
    profile = Path(tempfile.mkdtemp(prefix="atelier-chromium-"))
    user_data = profile / "profile"
    try:
        with (profile / "chromium.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--headless=new",
                    "--no-sandbox",  # as root, and in containers without user namespaces
                    "--remote-debugging-port=0",
                    f"--user-data-dir={user_data}",
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
                env={**os.environ, "TMPDIR": str(profile)},  # its singleton socket's directory
                start_new_session=True,  # its renderers and helpers share its process group
            )

            def listening() -> bool:
                if process.poll() is not None:
                    raise AssertionError(
                        f"chromium exited with {process.returncode}:\n"
                        + (profile / "chromium.log").read_text(errors="replace")[-4000:]
                    )
                return _devtools_address(user_data) is not None

            try:
                wait_until_sync(listening, "chromium to open its DevTools port")
                address = _devtools_address(user_data)
                assert address is not None
                with connect(address, max_size=None, open_timeout=DEADLINE_SECONDS) as ws:
                    browser = Browser(ws, user_data)
                    try:
                        yield browser
                    finally:
                        browser.close()
            finally:
                _stop(process)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Wait for Chromium to exit (after `Browser.close`); if it does not, SIGTERM its process
    group, then SIGKILL. Then SIGKILL whatever of the group outlived it."""
    for escalation in (signal.SIGTERM, signal.SIGKILL, None):
        try:
            process.wait(timeout=EXIT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if escalation is None:
                raise
            _signal_group(process, escalation)
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # the group has gone
