"""Pick the object store from settings, once, at startup."""

from __future__ import annotations

from pydantic import SecretStr

from app.config import Settings
from app.services.storage.base import Storage
from app.services.storage.local import LocalStorage, load_or_create_secret
from app.services.storage.r2 import R2Storage

LOCAL_SECRET_FILE = "local-url-secret"


def build_storage(settings: Settings) -> Storage:
    """The configured store. Blocking (reads or creates files, builds a boto3 client):
    call it in a thread from async code."""
    if settings.storage == "r2":
        return _r2(settings)
    if settings.local_url_secret is not None:
        secret = settings.local_url_secret.get_secret_value().encode()
        if not secret:
            raise ValueError("LOCAL_URL_SECRET is set but empty")
    else:
        secret = load_or_create_secret(settings.data_dir / LOCAL_SECRET_FILE)
    return LocalStorage(
        settings.objects_dir, secret, settings.public_base_url, settings.storage_workers
    )


def _r2(settings: Settings) -> R2Storage:
    def secret(value: SecretStr | None) -> str:
        return value.get_secret_value() if value is not None else ""

    required = {
        "R2_ENDPOINT": settings.r2_endpoint or "",
        "R2_BUCKET_NAME": settings.r2_bucket_name or "",
        "R2_ACCESS_KEY_ID": secret(settings.r2_access_key_id),
        "R2_SECRET_ACCESS_KEY": secret(settings.r2_secret_access_key),
    }
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise ValueError(f"STORAGE=r2 needs {', '.join(missing)}")
    return R2Storage(
        endpoint=required["R2_ENDPOINT"],
        bucket=required["R2_BUCKET_NAME"],
        access_key_id=required["R2_ACCESS_KEY_ID"],
        secret_access_key=required["R2_SECRET_ACCESS_KEY"],
        region=settings.r2_region,
        addressing_style=settings.r2_addressing_style,
        public_base_url=settings.r2_public_base_url,
        timeout_seconds=settings.storage_timeout_seconds,
        workers=settings.storage_workers,
    )
