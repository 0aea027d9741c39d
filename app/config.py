"""Settings, read once from the environment (and `.env`); every field is in `.env.example`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import limits
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["local", "gemini", "fal", "replicate"]

# What RATE_LIMIT_STORAGE_URL may name: memory (one budget per process) or Redis (shared).
RATE_LIMIT_SCHEMES = ("memory", "redis", "rediss")


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an absolute http(s) URL, lower-cased; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    netloc = parts.hostname if port in (None, default) else f"{parts.hostname}:{port}"
    return f"{parts.scheme}://{netloc}"


class BillingProduct(BaseModel):
    """One thing a user can buy: a credit pack (`payment`) or the Pro plan (`subscription`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    price_id: str = Field(min_length=1)
    credits: int = Field(gt=0)
    mode: Literal["payment", "subscription"]


# The usual local web origins (Next.js on 3000, Expo web on 8081), allowed by CORS in
# development unless CORS_ORIGINS says otherwise.
DEV_CORS_ORIGINS = (
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:8081",
    "http://127.0.0.1:8081",
)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    # None: JSON in production; elsewhere JSON unless stderr is a terminal (see logs_as_json).
    log_json: bool | None = None

    # Database: unset DATABASE_URL means an embedded PostgreSQL in DATA_DIR/pg.
    database_url: SecretStr | None = None
    direct_url: SecretStr | None = None
    db_pool_min_size: int = Field(default=2, ge=0)
    db_pool_max_size: int = Field(default=20, ge=1)
    db_statement_cache_size: int = Field(default=100, ge=0)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    migration_timeout_seconds: float = Field(default=900.0, gt=0)
    long_statement_timeout_seconds: float = Field(default=600.0, gt=0)
    migrate_on_start: bool = True

    # Authentication.
    auth: Literal["clerk", "dev"] = "dev"
    clerk_issuer: str | None = None
    clerk_jwks_url: str | None = None
    clerk_jwt_key: SecretStr | None = None
    clerk_authorized_parties: Annotated[list[str], NoDecode] = []
    clerk_require_azp: bool = False
    clerk_secret_key: SecretStr | None = None
    clerk_api_url: str = "https://api.clerk.com/v1"
    clerk_webhook_secret: SecretStr | None = None  # whsec_…: Svix signs Clerk's webhooks
    supabase_url: str | None = None
    supabase_jwt_secret: SecretStr | None = None  # legacy HS256 signing; only with SUPABASE_URL
    jwt_leeway_seconds: int = Field(default=5, ge=0, le=300)
    jwks_min_refresh_seconds: float = Field(default=60.0, ge=0)
    dev_auth_issuer: str = "atelier-dev"
    dev_token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    token_cache_size: int = Field(default=10_000, ge=0)
    # How long a verified API key serves without a new lookup: a revocation reaches other
    # processes within this (the revoking one forgets the key at once).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    token_verify_workers: int = Field(default=2, ge=1, le=64)
    outbound_timeout_seconds: float = Field(default=10.0, gt=0)

    # Users and credits.
    new_user_credits: int = Field(default=5, ge=0)
    cost_generate: int = Field(default=1, ge=0)
    cost_style: int = Field(default=1, ge=0)
    cost_edit: int = Field(default=1, ge=0)
    last_login_interval_seconds: int = Field(default=300, ge=0)

    # Generation.
    provider: ProviderName = "local"
    gemini_api_key: SecretStr | None = None
    gemini_base_url: str | None = None  # tests point this at a loopback server
    gemini_models: Annotated[list[str], NoDecode] = [
        "gemini-3.1-flash-image",
        "gemini-3-pro-image",
    ]
    gemini_timeout_seconds: float = Field(default=120.0, gt=0)
    gemini_max_retry_delay_seconds: float = Field(default=20.0, ge=0)
    gemini_server_error_retries: int = Field(default=2, ge=0)
    local_provider_delay_ms: int = Field(default=0, ge=0)
    local_provider_fail_rate: float = Field(default=0.0, ge=0, le=1)
    fal_key: SecretStr | None = None
    fal_model: str = Field(default="fal-ai/flux/dev", min_length=1)
    fal_image_to_image_model: str = Field(default="fal-ai/flux-pro/kontext", min_length=1)
    replicate_api_token: SecretStr | None = None
    replicate_model: str = Field(default="black-forest-labs/flux-schnell", min_length=1)
    replicate_image_to_image_model: str = Field(
        default="black-forest-labs/flux-kontext-pro", min_length=1
    )
    replicate_base_url: str | None = None  # tests point this at a loopback server
    # Fallback across providers: PROVIDERS (ordered) wins over the one-provider PROVIDER.
    providers: Annotated[list[ProviderName], NoDecode] = []
    provider_timeout_seconds: float = Field(default=180.0, gt=0)
    provider_deadline_seconds: float = Field(default=300.0, gt=0)
    provider_retries: int = Field(default=2, ge=0, le=10)
    provider_max_retry_delay_seconds: float = Field(default=20.0, ge=0)
    provider_poll_seconds: float = Field(default=0.5, gt=0)
    provider_breaker_failures: int = Field(default=5, ge=1)
    provider_breaker_cooldown_seconds: float = Field(default=30.0, ge=0)
    provider_output_hosts: Annotated[list[str], NoDecode] = [
        "fal.media",
        "fal.run",
        "fal.ai",
        "replicate.delivery",
        "replicate.com",
    ]
    provider_output_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    # Jobs and the worker.
    worker_in_process: bool = True  # `atelier serve` also runs a worker
    worker_concurrency: int = Field(default=16, ge=1, le=5000)
    job_lease_seconds: float = Field(default=60.0, ge=1)
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    storage_retries: int = Field(default=3, ge=0)
    job_attempt_deadline_seconds: float = Field(default=300.0, gt=0)
    worker_claim_batch: int = Field(default=32, ge=1, le=1000)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    max_prefer_wait_seconds: int = Field(default=60, ge=0, le=60)
    pack_reference_icons: int = Field(default=3, ge=0, le=10)
    pack_export_max_icons: int = Field(default=200, ge=1, le=10_000)

    # Outgoing webhooks (sent by the worker process).
    webhooks_allow_private: bool = False  # let endpoints resolve to private/loopback addresses
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # each endpoint gets every event of the user's jobs: the cap bounds that fan-out
    webhook_endpoints_max: int = Field(default=10, ge=1, le=100)
    # API keys one user may have: a bound on rows an account can create
    api_keys_max: int = Field(default=20, ge=1, le=1000)
    # Incoming webhook events keep their payload this long once processed (0: for ever).
    webhook_event_payload_days: int = Field(default=30, ge=0)

    # Uploads.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(default=16_777_216, ge=1)
    max_upload_side: int = Field(default=4096, ge=16)
    imaging_workers: int = Field(default=2, ge=1, le=64)

    # Per-user rate limits ("30/minute", "100 per hour", "5/10 seconds"); empty: no limit.
    rate_limit_generations: str = "30/minute"
    rate_limit_uploads: str = "60/minute"
    # Unset: in this process's memory; redis://host:port/db: one budget shared by all instances.
    rate_limit_storage_url: SecretStr | None = None
    rate_limit_key_prefix: str = Field(default="atelier-ratelimit", min_length=1)

    # Storage.
    storage: Literal["local", "r2"] = "local"
    public_base_url: str = "http://127.0.0.1:8000"
    local_url_secret: SecretStr | None = None  # unset: a random secret kept in DATA_DIR
    # At most 4 days: an R2 presigned URL lives at most 7, and is signed for 1.5x this.
    signed_url_ttl_seconds: int = Field(default=3600, ge=10, le=4 * 24 * 3600)
    r2_endpoint: str | None = None
    r2_bucket_name: str | None = None
    r2_access_key_id: SecretStr | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_public_base_url: str | None = None
    r2_region: str = "auto"
    r2_addressing_style: Literal["path", "virtual", "auto"] = "path"
    storage_timeout_seconds: float = Field(default=30.0, gt=0)
    storage_workers: int = Field(default=8, ge=1, le=256)

    # HTTP.
    # None (unset): DEV_CORS_ORIGINS in development, none elsewhere; see `allowed_origins`.
    cors_origins: Annotated[list[str] | None, NoDecode] = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_header_bytes: int = Field(default=32 * 1024, ge=8 * 1024)  # request line and headers
    # How long `atelier serve` keeps an idle keep-alive connection: longer than a proxy in
    # front keeps its own (60 s on AWS ALB), or the proxy reuses one the server is closing
    # at that moment and answers 502. uvicorn's own default is 5 s.
    http_keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    admin_user_ids: Annotated[list[str], NoDecode] = []

    # Metrics: a bearer token for /metrics, and/or a port of their own (no token there).
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # Billing (Stripe). Without STRIPE_SECRET_KEY the billing routes answer 503.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"  # tests point this at a loopback server
    stripe_timeout_seconds: float = Field(default=20.0, gt=0)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=5)
    billing_products: list[BillingProduct] = []
    checkout_return_origins: Annotated[list[str], NoDecode] = []
    checkout_success_url: str | None = None
    checkout_cancel_url: str | None = None
    portal_return_url: str | None = None

    _split = field_validator(
        "clerk_authorized_parties",
        "cors_origins",
        "admin_user_ids",
        "gemini_models",
        "providers",
        "provider_output_hosts",
        "checkout_return_origins",
        mode="before",
    )(_split_csv)

    @field_validator("rate_limit_generations", "rate_limit_uploads")
    @classmethod
    def _check_rate_limit(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            return value
        try:
            items = limits.parse_many(value)
        except ValueError:
            items = []
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(
                f"{str(info.field_name).upper()}={value!r} is not one rate limit such as "
                "'30/minute' or '100 per hour' (leave it empty for no limit)"
            )
        return value

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _check_rate_limit_storage(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().partition("://")[0]
        if scheme not in RATE_LIMIT_SCHEMES:
            raise ValueError(
                f"RATE_LIMIT_STORAGE_URL must start with one of "
                f"{', '.join(s + '://' for s in RATE_LIMIT_SCHEMES)} (got {scheme!r})"
            )
        return value

    @field_validator("billing_products")
    @classmethod
    def _check_products(cls, value: list[BillingProduct]) -> list[BillingProduct]:
        for field in ("id", "price_id"):
            seen = [getattr(p, field) for p in value]
            if len(seen) != len(set(seen)):
                raise ValueError(f"BILLING_PRODUCTS: each product needs its own {field}")
        return value

    @field_validator("checkout_return_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = []
        for item in value:
            origin = origin_of(item)
            if origin is None:
                raise ValueError(f"CHECKOUT_RETURN_ORIGINS: {item!r} is not an http(s) origin")
            origins.append(origin)
        return origins

    @property
    def logs_as_json(self) -> bool | None:
        """LOG_JSON when set; JSON in production (a container run with a terminal, `-t`,
        still feeds a log collector); else None: observability chooses by the terminal."""
        if self.log_json is not None:
            return self.log_json
        return True if self.env == "production" else None

    @property
    def allowed_origins(self) -> list[str]:
        """The origins CORS allows: CORS_ORIGINS when set (empty: none), else the local web
        origins in development and none elsewhere."""
        if self.cors_origins is not None:
            return self.cors_origins
        return list(DEV_CORS_ORIGINS) if self.env == "development" else []

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """Refuse an unsafe or incomplete configuration, naming every problem at once."""
        problems = self.production_problems() if self.env == "production" else []
        if self.auth == "clerk" and not (self.clerk_jwt_key or self.jwks_url):
            problems.append("AUTH=clerk needs CLERK_ISSUER, CLERK_JWKS_URL or CLERK_JWT_KEY")
        if self.auth == "clerk" and not self.clerk_issuer:
            problems.append("AUTH=clerk needs CLERK_ISSUER (the Frontend API URL of the instance)")
        if self.metrics_token is not None and not self.metrics_token.get_secret_value():
            problems.append("METRICS_TOKEN is set but empty")
        if self.supabase_jwt_secret is not None and not self.supabase_url:
            problems.append("SUPABASE_JWT_SECRET needs SUPABASE_URL (whose tokens it verifies)")
        for name in ("checkout_success_url", "checkout_cancel_url", "portal_return_url"):
            url = getattr(self, name)
            if url is not None and origin_of(url) not in self.checkout_return_origins:
                problems.append(
                    f"{name.upper()} must be on one of CHECKOUT_RETURN_ORIGINS (got {url!r})"
                )
        if len(set(self.providers)) != len(self.providers):
            problems.append("PROVIDERS names a provider twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """What ENV=production refuses: dev tools, local state, metrics open to anyone."""
        problems = []
        if self.auth == "dev":
            problems.append("AUTH=dev signs its own tokens and is refused when ENV=production")
        if self.database_url is None:
            problems.append("ENV=production needs DATABASE_URL (no embedded database)")
        if "local" in self.provider_chain:
            problems.append(
                "PROVIDER=local (or local in PROVIDERS) is an offline dev tool, refused when "
                "ENV=production"
            )
        if self.storage == "local":
            problems.append(
                "STORAGE=local keeps objects on this machine's disk, refused when "
                "ENV=production (use STORAGE=r2)"
            )
        if self.metrics_token is None and self.metrics_port is None:
            problems.append(
                "ENV=production needs METRICS_TOKEN or METRICS_PORT (/metrics is not public)"
            )
        return problems

    @property
    def provider_chain(self) -> list[ProviderName]:
        """The providers a job tries, in order: PROVIDERS, or else the one PROVIDER."""
        return list(self.providers) or [self.provider]

    @property
    def billing_configured(self) -> bool:
        return self.stripe_secret_key is not None

    @property
    def jwks_url(self) -> str | None:
        if self.clerk_jwks_url:
            return self.clerk_jwks_url
        if self.clerk_issuer:
            return self.clerk_issuer.rstrip("/") + "/.well-known/jwks.json"
        return None

    @property
    def costs(self) -> dict[str, int]:
        return {"generate": self.cost_generate, "style": self.cost_style, "edit": self.cost_edit}

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def embedded_pg_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "dev-auth-key.pem"
