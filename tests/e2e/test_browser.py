"""A real browser on another origin uses `atelier serve`, as the Next.js web app does.

Debian's Chromium runs headless and loads a page (tests/e2e/browser_page.html) from a
loopback port of its own, which `CORS_ORIGINS` allows. Scripts in that page `fetch` the API
with the token in a header, so the browser preflights every call and enforces the answer
itself: it starts a generation (and replays it, waits for one, and is rate limited), reads
only the headers CORS exposes, follows the job's event stream, drops it while the job is
still running and reconnects sending `Last-Event-ID` (which CORS must allow; the job stream
does not replay, it starts again from the job's current state), reconnects to the feed, and
sends `HEAD`. The server's access log shows the preflights the browser made. A page from an
origin that is not allowed, and a header that is not, are refused by the browser: the same
checks fail when CORS is wrong. Chromium leaves nothing behind outside its temporary
directory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import (
    COMMAND_SECONDS,
    Browser,
    Page,
    chromium_binary,
    headless_chromium,
)
from tests.support.polling import wait_until_sync
from tests.support.serve import SERVE_STDERR, atelier_serve, on_test_database
from tests.support.services import require

PAGE = Path(__file__).with_name("browser_page.html").read_bytes()
RATE_LIMIT = 3  # generations an hour: the fourth in this test is refused
# Each image takes this long, so the job is still running when its stream is first read (a
# few requests after it was created) and is dropped mid-job...
PROVIDER_DELAY_MS = 3000
# ...and a job that waits for its image still ends well within this (`Prefer: wait=10`),
# which is far below the page's own fetch timeout (FETCH_TIMEOUT_MS in browser_page.html).
WAIT_SECONDS = 10
EXPOSED_ON_A_JOB = {
    "location",
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
}


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def page_origin() -> Iterator[str]:
    """Serve the page on a loopback port of its own (a different origin from the API's);
    yield that origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run(page: Page, body: str, **values: object) -> Any:
    """Run `body` (JavaScript, ending in `return …`) in the page as an async function, with
    `values` bound as constants; its result as JSON gives it back."""
    constants = "".join(f"const {name} = {json.dumps(value)};\n" for name, value in values.items())
    return page.evaluate(f"(async () => {{\n{constants}{body}\n}})()")


def access_log(stderr: Path) -> list[str]:
    """The server's access log so far, as "METHOD /path STATUS" lines."""
    lines = []
    for line in stderr.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("logger") == "atelier.access":
            lines.append(record["msg"])
    return lines


def logged(stderr: Path, *wanted: str) -> list[str]:
    """Wait until each of `wanted` is in the access log (it is written once a response has
    ended); the log then."""
    wait_until_sync(
        lambda: all(line in access_log(stderr) for line in wanted), f"{wanted} in the access log"
    )
    return access_log(stderr)


@dataclass
class Setup:
    api: str  # the API's base URL
    allowed: str  # the page's origin, in CORS_ORIGINS
    other: str  # another page origin, not in CORS_ORIGINS
    token: str
    stderr: Path  # the server's log
    browser: Browser


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    require(binary is not None, "Chromium is not installed (apt-get install chromium)")
    assert binary is not None
    return binary


@pytest.fixture
def setup(
    chromium: str,
    db_url: str,
    data_dir: Path,
    tmp_path: Path,
    dev_token: Callable[..., str],
) -> Iterator[Setup]:
    with page_origin() as allowed, page_origin() as other:
        with atelier_serve(
            tmp_path,
            **on_test_database(db_url, data_dir),
            LOG_JSON="true",
            PROVIDER="local",
            LOCAL_PROVIDER_DELAY_MS=str(PROVIDER_DELAY_MS),
            RATE_LIMIT_GENERATIONS=f"{RATE_LIMIT}/hour",
            CORS_ORIGINS=allowed,
        ) as (host, port):
            with headless_chromium(chromium) as browser:
                yield Setup(
                    api=f"http://{host}:{port}",
                    allowed=allowed,
                    other=other,
                    token=dev_token("user_browser", "browser@example.test"),
                    stderr=tmp_path / SERVE_STDERR,
                    browser=browser,
                )


GENERATE = """
return await attempt(API + "/v1/generations", {
  method: "POST",
  headers: {
    Authorization: "Bearer " + TOKEN,
    "Content-Type": "application/json",
    "Idempotency-Key": KEY,
    ...EXTRA,
  },
  body: JSON.stringify({prompt: "a watercolor fox, flat icon"}),
});
"""

FOLLOW_WITH_A_RECONNECT = """
const url = API + "/v1/jobs/" + JOB + "/events";
const headers = {Authorization: "Bearer " + TOKEN};
const deadline = AbortSignal.timeout(FETCH_TIMEOUT_MS);  // for both connections together
const dropped = new AbortController();
const opened = await fetch(url, {headers, signal: AbortSignal.any([dropped.signal, deadline])});
const before = (await sseEvents(opened).next()).value;
dropped.abort();  // the connection drops, as it does when a phone changes networks
// A browser's EventSource sends the last id it saw when it reconnects; so does this page.
const again = await fetch(url, {
  headers: {...headers, "Last-Event-ID": before.id},
  signal: deadline,
});
const after = [];
for await (const event of sseEvents(again)) {
  after.push(event);
  if (["completed", "failed"].includes(JSON.parse(event.data).status)) break;
}
return {
  opened: {status: opened.status, headers: readable(opened), event: before},
  again: {status: again.status, events: after},
};
"""

IMAGE_SIZE = """
const response = await fetch(URL, {signal: AbortSignal.timeout(FETCH_TIMEOUT_MS)});
const bitmap = await createImageBitmap(await response.blob());
return {status: response.status, width: bitmap.width, height: bitmap.height};
"""

FEED_AFTER_A_GAP = """
const controller = new AbortController();
const response = await fetch(API + "/v1/feed/events", {
  headers: {Authorization: "Bearer " + TOKEN, "Last-Event-ID": "ready-seen-before"},
  signal: AbortSignal.any([controller.signal, AbortSignal.timeout(FETCH_TIMEOUT_MS)]),
});
const events = [];
for await (const event of sseEvents(response)) {
  events.push(event);
  if (events.length === 2) break;
}
controller.abort();
return {status: response.status, events: events.map(event => event.event)};
"""


def test_a_page_on_another_origin_generates_follows_the_job_and_reconnects(
    setup: Setup,
) -> None:
    page = setup.browser.open_page(setup.allowed + "/")
    api, token = setup.api, setup.token
    assert run(page, "return location.origin;") == setup.allowed != api
    # A slow answer must show up as the server's, not as the page or the test giving up.
    assert WAIT_SECONDS * 2 < run(page, "return FETCH_TIMEOUT_MS;") / 1000 < COMMAND_SECONDS

    created = run(page, GENERATE, API=api, TOKEN=token, KEY="browser-1", EXTRA={})
    assert created.get("status") == 202, created
    job = json.loads(created["body"])
    # Null in the page unless exposed: the browser hides every header CORS does not list.
    assert EXPOSED_ON_A_JOB <= created["headers"].keys(), created["headers"]
    assert created["headers"]["location"] == f"/v1/jobs/{job['id']}"
    assert created["headers"]["ratelimit-remaining"] == str(RATE_LIMIT - 1)
    assert "x-content-type-options" not in created["headers"]  # sent, but not exposed

    replayed = run(page, GENERATE, API=api, TOKEN=token, KEY="browser-1", EXTRA={})
    assert replayed.get("status") in (200, 202), replayed
    assert replayed["headers"].get("idempotent-replayed") == "true", replayed["headers"]
    assert json.loads(replayed["body"])["id"] == job["id"]

    followed = run(page, FOLLOW_WITH_A_RECONNECT, API=api, TOKEN=token, JOB=job["id"])
    assert followed["opened"]["status"] == 200
    assert followed["opened"]["headers"]["content-type"].startswith("text/event-stream")
    first = followed["opened"]["event"]
    before = json.loads(first["data"])
    assert first["event"] == "job" and first["id"] == str(before["progress"])
    assert before["status"] in ("pending", "running"), before  # dropped mid-job
    # The reconnect (its Last-Event-ID let through by CORS) follows the job to its end.
    assert followed["again"]["status"] == 200
    events = [json.loads(event["data"]) for event in followed["again"]["events"]]
    assert events and all(event["id"] == job["id"] for event in events), events
    assert all(event["progress"] >= before["progress"] for event in events), events
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100, events

    # The finished job's image, fetched and decoded by the page from its signed URL.
    image = events[-1]["image"]
    decoded = run(page, IMAGE_SIZE, URL=image["url"])
    assert decoded == {"status": 200, "width": image["width"], "height": image["height"]}

    prefer = f"wait={WAIT_SECONDS}"
    waited = run(page, GENERATE, API=api, TOKEN=token, KEY="browser-2", EXTRA={"Prefer": prefer})
    assert waited.get("status") == 200, waited
    assert waited["headers"].get("preference-applied") == prefer, waited["headers"]

    limited = run(page, GENERATE, API=api, TOKEN=token, KEY="browser-3", EXTRA={})
    assert limited.get("status") == 429, limited
    assert int(limited["headers"]["retry-after"]) > 0, limited["headers"]
    assert limited["headers"]["content-type"] == "application/problem+json"

    feed = run(page, FEED_AFTER_A_GAP, API=api, TOKEN=token)
    assert feed == {"status": 200, "events": ["ready", "resync"]}

    head = run(
        page,
        'return await attempt(API + "/v1/jobs/" + JOB, {method: "HEAD", headers: AUTH});',
        API=api,
        JOB=job["id"],
        AUTH={"Authorization": f"Bearer {token}"},
    )
    assert head.get("status") == 200 and head["body"] == "", head
    assert "x-request-id" in head["headers"], head["headers"]

    # Every one of those calls was preflighted: the browser asked, the server allowed.
    preflights = [
        "OPTIONS /v1/generations 200",
        f"OPTIONS /v1/jobs/{job['id']}/events 200",
        "OPTIONS /v1/feed/events 200",
        f"OPTIONS /v1/jobs/{job['id']} 200",
    ]
    logged(setup.stderr, *preflights)


def test_the_browser_refuses_an_origin_and_a_header_that_are_not_allowed(setup: Setup) -> None:
    me = 'return await attempt(API + "/v1/me", {headers: HEADERS});'
    auth = {"Authorization": f"Bearer {setup.token}"}

    stranger = setup.browser.open_page(setup.other + "/")
    refused = run(stranger, GENERATE, API=setup.api, TOKEN=setup.token, KEY="other", EXTRA={})
    assert refused.get("error") == "TypeError", refused  # the browser's "Failed to fetch"

    allowed = setup.browser.open_page(setup.allowed + "/")
    unlisted = run(allowed, me, API=setup.api, HEADERS={**auth, "X-Unlisted": "1"})
    assert unlisted.get("error") == "TypeError", unlisted
    # The same call with only allowed headers goes through: the refusals above are CORS's.
    answered = run(allowed, me, API=setup.api, HEADERS=auth)
    assert answered.get("status") == 200, answered

    log = logged(
        setup.stderr, "OPTIONS /v1/generations 400", "OPTIONS /v1/me 400", "GET /v1/me 200"
    )
    # The preflights were refused, so the requests themselves were never sent.
    assert not any(line.startswith("POST /v1/generations") for line in log), log
    assert log.count("GET /v1/me 200") == 1, log


def test_chromium_leaves_nothing_behind_outside_its_temporary_directory(chromium: str) -> None:
    """Chromium keeps its singleton socket in `$TMPDIR/org.chromium.Chromium.XXXXXX`, which a
    signal leaves behind: once the browser has been stopped, the directory it used is gone.
    (The one this browser used, read from its profile: a listing of /tmp before and after
    would also see other Chromium processes on the machine come and go.)"""
    with headless_chromium(chromium) as browser:
        used = browser.singleton_dir()
        assert (used / "SingletonSocket").is_socket(), used
        temporary = browser.user_data_dir.parent
    assert not used.exists(), f"chromium left {used} behind"
    assert not temporary.exists(), f"{temporary} was not removed"
