"""clients/typescript ships types generated from the OpenAPI document: they must be what the
document generates today, and an example calling every operation must compile under
`tsc --strict`. Needs Node.js and `npm ci` in clients/typescript (.ci/run does both)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import openapi_json
from app.config import Settings
from tests.support.services import require

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"


def _document() -> str:
    return openapi_json(Settings(_env_file=None))


def _require_toolchain() -> None:
    require(shutil.which("node") is not None, "Node.js is not installed")
    require(
        (BIN / "openapi-typescript").exists() and (BIN / "tsc").exists(),
        "clients/typescript has no node_modules (run npm ci --ignore-scripts there)",
    )


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=CLIENT, capture_output=True, text=True, timeout=300
    )


def test_the_committed_document_is_the_one_the_app_serves() -> None:
    committed = (CLIENT / "openapi.json").read_text(encoding="utf-8")
    assert committed == _document(), (
        "clients/typescript/openapi.json is stale: run "
        "`.venv/bin/atelier openapi --output clients/typescript/openapi.json` "
        "and `npm run generate` in clients/typescript"
    )


def test_the_example_calls_every_operation() -> None:
    spec = json.loads(_document())
    ids = {
        operation["operationId"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    example = (CLIENT / "example" / "all-operations.ts").read_text(encoding="utf-8")
    marked = set(re.findall(r"// (\w+)$", example, flags=re.MULTILINE))
    assert len(ids) >= 40
    assert ids - marked == set(), "operations the example does not call"


def test_generated_types_are_current_and_the_example_compiles(tmp_path: Path) -> None:
    _require_toolchain()
    document = tmp_path / "openapi.json"
    document.write_text(_document(), encoding="utf-8")
    generated = tmp_path / "schema.d.ts"
    script = json.loads((CLIENT / "package.json").read_text())["scripts"]["generate"]
    # the package's own generate command, pointed at the fresh document and a temp output
    args = script.split()[1:]
    args[args.index("openapi.json")] = str(document)
    args[args.index("--output") + 1] = str(generated)
    result = _run(BIN / "openapi-typescript", *args)
    assert result.returncode == 0, result.stderr
    committed = (CLIENT / "src" / "schema.d.ts").read_text(encoding="utf-8")
    assert generated.read_text(encoding="utf-8") == committed, (
        "clients/typescript/src/schema.d.ts is stale: run `npm run generate` there"
    )

    result = _run(BIN / "tsc", "--noEmit", "--strict", "-p", "tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("broken", ['status: "cancelled"'])
def test_tsc_refuses_a_call_the_document_does_not_allow(tmp_path: Path, broken: str) -> None:
    """The compile step can fail: a job status the document does not list is an error."""
    _require_toolchain()
    # Outside the package, so that another test compiling it meanwhile (pytest-xdist) does
    # not see this file's error; the same compiler options as tsconfig.json.
    probe = tmp_path / "probe.ts"
    schema = (CLIENT / "src" / "schema").as_posix()
    probe.write_text(
        f'import type {{ components }} from "{schema}";\n'
        f'export const job: Pick<components["schemas"]["Job"], "status"> = {{ {broken} }};\n',
        encoding="utf-8",
    )
    config = tmp_path / "tsconfig.json"
    config.write_text(
        json.dumps(
            {"extends": (CLIENT / "tsconfig.json").as_posix(), "files": ["probe.ts"], "include": []}
        ),
        encoding="utf-8",
    )
    result = _run(BIN / "tsc", "--noEmit", "-p", config)
    assert result.returncode != 0
    assert "cancelled" in result.stdout
    # the probe fails for the status alone: the same probe with a listed one compiles
    probe.write_text(probe.read_text().replace(broken, 'status: "completed"'), encoding="utf-8")
    result = _run(BIN / "tsc", "--noEmit", "-p", config)
    assert result.returncode == 0, result.stdout + result.stderr


# Two events as a server may write them: CRLF line ends (a proxy's rewriting, or another
# server), a comment, a field without a space after its colon, and data over two lines.
STREAM = (
    ": keep-alive\r\n\r\n"
    'event: job\r\nid: 7\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
    'data: {"c": 3}\n\n'
    'event:ready\rdata:{"b": 2}\r\r'
    'data: {"never": "ended"}\n'
)
PARSED = [
    {"event": "job", "id": "7", "data": {"a": 1}},
    {"event": "message", "data": {"c": 3}},
    {"event": "ready", "data": {"b": 2}},
]
DRIVER = """
import { parseEvents } from "./streams.js";
const text = process.argv[2];
const results = [];
// The stream cut into two chunks at every place, a CR and its LF in separate chunks included.
for (let cut = 0; cut <= text.length; cut++) {
  const chunks = [text.slice(0, cut), text.slice(cut)].map((s) => new TextEncoder().encode(s));
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  const events = [];
  for await (const event of parseEvents(body)) {
    events.push(event.id === undefined ? { event: event.event, data: event.data } : event);
  }
  results.push(events);
}
// The whole text in one read on a stream that stays open (as the feed's does between
// events): every event it ends arrives without waiting for more bytes.
const open = new ReadableStream({
  start(controller) {
    controller.enqueue(new TextEncoder().encode(text));
  },
});
const arrived = [];
const reading = (async () => {
  for await (const event of parseEvents(open)) {
    arrived.push(event.id === undefined ? { event: event.event, data: event.data } : event);
  }
})();
await Promise.race([reading, new Promise((resolve) => setTimeout(resolve, 500))]);
console.log(JSON.stringify({ cuts: results, open: arrived }));
process.exit(0);
"""


def test_the_stream_parser_reads_events_however_the_bytes_arrive(tmp_path: Path) -> None:
    """`parseEvents` (the job and feed streams), compiled and run under Node: the same events
    wherever the body is cut into chunks, with LF, CR or CRLF line ends, and each as soon as
    its blank line has arrived."""
    _require_toolchain()
    result = _run(
        BIN / "tsc",
        "--strict",
        "--target", "ES2022",
        "--module", "ESNext",
        "--moduleResolution", "Bundler",
        "--lib", "ES2022,DOM,DOM.Iterable",
        "--outDir", tmp_path,
        CLIENT / "src" / "streams.ts",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "package.json").write_text('{"type": "module"}', encoding="utf-8")
    (tmp_path / "driver.js").write_text(DRIVER, encoding="utf-8")
    # As written, and ending at the CR CR that ends the last whole event.
    for text in (STREAM, STREAM.rpartition("\r\r")[0] + "\r\r"):
        run = subprocess.run(
            ["node", tmp_path / "driver.js", text],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        results = answer["cuts"]
        assert len(results) == len(text) + 1
        wrong = [cut for cut, events in enumerate(results) if events != PARSED]
        assert wrong == [], f"{text!r} cut at {wrong}: {results[wrong[0]] if wrong else ''}"
        assert answer["open"] == PARSED, f"{text!r} on a stream left open"
