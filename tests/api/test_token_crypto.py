"""Token signature checks run in the verifier's own bounded pool, which the lifespan closes.

Issue 9: storage calls, Pillow and RSA checks shared one default thread pool, so a few hung
bucket calls delayed every sign-in behind them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from app.services import devauth
from app.services.auth import Issuer, TokenVerifier
from app.services.auth_keys import RS256, StaticKey
from tests.fakes.running import running
from tests.support.auth import bearer


def _dev(tmp_path: Path) -> tuple[Settings, TokenVerifier, list[str]]:
    settings = Settings(_env_file=None, auth="dev", data_dir=tmp_path)
    key = devauth.load_or_create_key(settings.dev_key_path)
    issuer = Issuer(settings.dev_auth_issuer, {RS256: StaticKey(devauth.public_pem(key))})
    verifier = TokenVerifier(
        [issuer], authorized_parties=[], require_azp=False, leeway=5, cache_size=0, workers=2
    )
    tokens = [devauth.mint(settings, key, f"user_crypto{i}") for i in range(4)]
    return settings, verifier, tokens


def test_token_checks_do_not_wait_behind_a_stalled_default_executor(tmp_path: Path) -> None:
    _, verifier, tokens = _dev(tmp_path)
    release = threading.Event()

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        # Every thread of the default pool is held, as hung storage calls would hold them.
        stalled = ThreadPoolExecutor(max_workers=2)
        loop.set_default_executor(stalled)
        held = [loop.run_in_executor(None, release.wait) for _ in range(2)]
        try:
            found = await asyncio.wait_for(
                asyncio.gather(*(verifier.verify(t) for t in tokens)), timeout=10
            )
            return [identity.sub for identity in found]
        finally:
            release.set()
            await asyncio.gather(*held)

    try:
        subs = asyncio.run(main())
    finally:
        release.set()
        verifier.close()
    assert subs == [f"user_crypto{i}" for i in range(4)]


def test_signature_checks_run_on_the_token_crypto_threads_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, verifier, tokens = _dev(tmp_path)
    names: list[str] = []
    decode = verifier._decode

    def recording(*args: object) -> object:
        names.append(threading.current_thread().name)
        return decode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(verifier, "_decode", recording)

    async def main() -> None:
        await asyncio.gather(*(verifier.verify(t) for t in tokens))

    try:
        asyncio.run(main())
    finally:
        verifier.close()
    assert len(names) == len(tokens)
    assert all(name.startswith("token-crypto") for name in names), names
    # bounded: never more threads than TOKEN_VERIFY_WORKERS (2 here)
    assert len(set(names)) <= 2, names


def test_a_closed_verifier_checks_no_more_signatures(tmp_path: Path) -> None:
    _, verifier, tokens = _dev(tmp_path)
    verifier.close()
    with pytest.raises(RuntimeError):
        asyncio.run(verifier.verify(tokens[0]))


async def test_the_lifespan_closes_the_token_crypto_pool(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"token_verify_workers": 1}))
    key = devauth.load_or_create_key(settings.dev_key_path)
    async with running(app) as client:
        response = await client.get(
            "/v1/me", headers=bearer(devauth.mint(settings, key, "user_crypto_life"))
        )
        assert response.status_code == 200, response.text
        verifier = app.state.services.verifier
    # After shutdown a token not seen before cannot be checked: the pool is gone.
    with pytest.raises(RuntimeError):
        await verifier.verify(devauth.mint(settings, key, "user_crypto_after"))
