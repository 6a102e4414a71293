"""One typed settings object: embedded defaults, a YAML file, then ``IATROS_*`` overrides.

Precedence (highest first): environment variables, the YAML file, the embedded
``defaults.yaml``, the field defaults below. A YAML file replaces whole top-level
sections of the defaults (so a file that lists ``providers`` gets exactly those).
Nested settings are reachable from the environment with ``__``:
``IATROS_SERVER__PORT=9000``. Strings in the YAML may reference the environment
as ``${NAME}`` so secrets stay out of files.

Why this module is long: it is the one typed settings object of every area (routing,
cache, knowledge, jobs, reviews, experiments, ...), kept together on purpose so that a
reader sees every setting and its default in one place.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from iatros.agents.settings import AgentSettings
from iatros.cache import CacheSettings
from iatros.clinical.imaging.settings import ImagingSettings
from iatros.clinical.imaging.vision_settings import RadiographAnalysisSettings
from iatros.clinical.scribe.settings import ScribeSettings
from iatros.clinical.speech.settings import TranscriptionSettings
from iatros.image_parts import ImageInputSettings
from iatros.instances import check_instances, instance_warnings
from iatros.jobs.settings import JobSettings
from iatros.knowledge import KnowledgeSettings
from iatros.observability.settings import AlertSettings, TracingSettings
from iatros.routing.health import BreakerSettings


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    """Worker processes; ``auto`` = one per core. Several workers need shared state:
    Redis (``redis_url``) for the cache and rate limits to be shared, and no embedded
    knowledge index (it has a single writer)."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(300.0, gt=0)
    stall_log_ms: float = Field(500.0, ge=0)
    """An event loop silent this long is logged with where it is stuck; 0 turns it off."""
    shed_lag_ms: float = Field(500.0, ge=0)
    """Load shedding: while the event loop runs this late, new chat/embedding requests get
    429 ``overloaded`` with ``Retry-After`` at once (api/shedding.py); 0 turns it off."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Names clients reach the server by (``Host``); others get 403 ``forbidden_host``
    (DNS rebinding). Empty: automatic (loopback names, the bind address and IP literals
    on a loopback bind; no check on a network bind). ``*.example.org`` covers subdomains;
    ``["*"]`` turns the check off. See ``api/origin_guard.py``."""

    instances: int = Field(1, ge=1, le=1000)
    """Instances behind one balancer: over 1, diverging settings are refused (instances.py)."""
    shutdown_timeout_s: float = Field(30.0, ge=0)
    """SIGTERM: requests and streams get this long to finish (api/shutdown.py)."""

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else self.workers


class ProviderConfig(BaseModel):
    """A provider instance: ``type`` picks the registered factory; the rest are its options."""

    model_config = ConfigDict(extra="allow")
    type: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DeploymentConfig(_Strict):
    """A concrete model served by one provider (what answers a request)."""

    provider: str
    model: str = Field(min_length=1)
    kind: Literal["chat", "embedding", "transcription"] = "chat"
    region: str | None = None
    context_window: int = Field(8192, ge=16)
    max_output_tokens: int = Field(1024, ge=1)
    price_per_1k_input: float = Field(0.0, ge=0)
    price_per_1k_output: float = Field(0.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    """Extra request parameters sent with every call (e.g. Azure deployment quirks)."""
    timeout_s: float | None = Field(None, gt=0)
    """Per-attempt timeout for this deployment (the route's ``attempt_timeout_s`` otherwise)."""
    vision: bool = False
    """The model reads images (``image_url`` content parts); requests with images are
    routed only to deployments that say so (``iatros/image_parts.py``)."""


class RetrySettings(_Strict):
    max_attempts: int = Field(2, ge=1, le=10)
    """Tries per deployment (the first included) before falling back to the next one."""
    backoff_base_ms: float = Field(50.0, ge=0)
    backoff_max_ms: float = Field(2000.0, ge=0)


class ComplexitySettings(_Strict):
    small: str
    large: str
    threshold: float = Field(0.5, ge=0, le=1)


class ModelRouteConfig(_Strict):
    """A logical model name clients ask for: a policy over deployments.

    ``strategy`` orders the ``deployments`` for each request (``priority`` keeps
    the listed order); ``fallbacks`` (deployments or other logical models) are
    tried after them, in order.
    """

    description: str = ""
    strategy: Literal["priority", "complexity", "latency", "weighted", "cost"] = "priority"
    deployments: list[str] = Field(default_factory=list)
    complexity: ComplexitySettings | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    fallbacks: list[str] = Field(default_factory=list)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    attempt_timeout_s: float | None = Field(None, gt=0)
    """Give up on one deployment after this long (for streams: until the first token)."""
    deadline_s: float | None = Field(None, gt=0)
    """Give up on the whole request after this long (retries and fallbacks included)."""
    knowledge: str | None = None
    """Ground every answer of this model in this collection (the tenant's own)."""
    verification: Literal["withhold", "flag", "off"] | None = None
    """Overrides ``knowledge.verification`` for this route."""
    cache: dict[str, Any] = Field(default_factory=dict)
    """Route-level cache policy (``semantic``, ``semantic_threshold``, ``ttl_s``, ...)."""

    @model_validator(mode="after")
    def _pool(self) -> ModelRouteConfig:
        if self.complexity is not None:
            for name in (self.complexity.small, self.complexity.large):
                if name not in self.deployments:
                    self.deployments.append(name)
        elif self.strategy == "complexity":
            raise ValueError("strategy 'complexity' needs a 'complexity' section (small, large)")
        if not self.deployments:
            raise ValueError("deployments: at least one deployment is required")
        return self


class RoutingSettings(_Strict):
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    health_check_interval_s: float | None = Field(None, gt=0)
    """Probe every provider this often (off by default; traffic itself feeds the breakers)."""
    panic_threshold: float = Field(1.0, ge=0, le=1)
    """Panic routing (as Envoy's panic threshold): when the share of a route's deployments
    whose breakers admit traffic is under this, the refused ones stay in the plan as a last
    resort, tried once each after the admitted ones failed. 1.0: as soon as one breaker
    refuses; 0: only when every breaker refuses (never less: a request is not refused while
    a deployment might answer it)."""


class EmbeddingSettings(_Strict):
    default_model: str | None = None


class WebhookSettings(_Strict):
    """A webhook notified of review-queue events (``iatros.reviews.webhooks``)."""

    url: str | None = None
    secret: SecretStr | None = None
    """Key of the ``x-iatros-signature`` HMAC; default: derived from ``secret_key``."""
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_s: float = Field(2.0, ge=0)
    """Retry after 2, 4, 8, 16, 32 s… (capped at ``backoff_max_s``)."""
    backoff_max_s: float = Field(600.0, ge=0)
    timeout_s: float = Field(10.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)


class ReviewSettings(_Strict):
    """The human review queue (``iatros.reviews``)."""

    sla_hours: float = Field(24.0, gt=0)
    """An open item older than this is shown as overdue."""
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)


class ExperimentSettings(_Strict):
    """Releases, experiments and their analysis (``iatros.experiments``)."""

    refresh_s: float = Field(2.0, gt=0)
    """How often an instance reloads releases and experiments from the shared database:
    another instance's promotion or rollback takes effect here within this delay."""
    analysis_interval_s: float = Field(3600.0, gt=0)
    """How often running experiments with ``auto_promote`` are analysed for a winner."""


class AuditSettings(_Strict):
    """Where the signed checkpoints of the audit chain go (see ``governance/anchors.py``)."""

    anchor_file: Path | None = None
    """Append-only file of signed heads; default ``<data_dir>/audit-anchors.jsonl``. Put it
    where the database's users cannot write (another volume, append-only storage)."""
    anchor_interval_s: float = Field(5.0, ge=0)
    """At most one anchor per interval (and one at shutdown): a truncation of the chain can
    go unnoticed only for the records of the last interval."""
    anchor_url: str | None = None
    """Also POST each anchor as JSON to this webhook (another system's log)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IATROS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("./data")
    admin_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    """Key for keyed hashes of identifiers (audit, cache tags) and of the audit chain; share
    it across instances. Without it, one is generated into ``<data_dir>/secret.key``."""
    secret_keys_old: SecretStr | None = None
    """Previous secret keys, comma-separated: audit records they keyed still verify."""
    auth_failures_per_minute: int = Field(20, ge=1)
    """Failed authentications a client address may make per minute before getting 429s."""
    allow_anonymous_loopback: bool = True
    """With no key configured, accept unauthenticated requests, but only on a loopback bind."""
    redis_url: str | None = None
    ratelimit_timeout_ms: float = Field(250.0, gt=0)
    """How long a rate-limit check may wait for Redis before falling back to this instance."""
    database_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_content: bool = False
    """Log prompts and answers. Off by default: they may hold patient data."""
    preload: bool = True
    """Load local models at start (``/readyz`` reports when they are ready)."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    deployments: dict[str, DeploymentConfig] = Field(default_factory=dict)
    models: dict[str, ModelRouteConfig] = Field(default_factory=dict)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    reviews: ReviewSettings = Field(default_factory=ReviewSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    transcription: TranscriptionSettings = Field(default_factory=TranscriptionSettings)
    scribe: ScribeSettings = Field(default_factory=ScribeSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    """OpenTelemetry traces (off by default; see ``observability/tracing.py``)."""
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    """Anomaly detection and alert routing (off by default; see ``observability/alerts.py``)."""
    images: ImageInputSettings = Field(default_factory=ImageInputSettings)
    """Images in chat requests: size, types, remote URLs (``iatros/image_parts.py``)."""
    radiograph_analysis: RadiographAnalysisSettings = Field(
        default_factory=RadiographAnalysisSettings
    )
    """Which vision model gives the AI second opinion on radiographs."""
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    """Radiograph uploads: size limits, what counts as a radiograph, burned-in text masking."""
    agents: AgentSettings = Field(default_factory=AgentSettings)
    """Agents and workflows: enabled tools per tenant, the HTTP tool's allow-list, runs."""

    @model_validator(mode="before")
    @classmethod
    def _cache_defaults(cls, data: Any) -> Any:
        """The cache shares the top-level Redis URL and secret unless it names its own."""
        if isinstance(data, dict):
            cache = data.get("cache")
            cache = dict(cache) if isinstance(cache, dict) else {}
            if data.get("redis_url") and "redis_url" not in cache:
                cache["redis_url"] = data["redis_url"]
            if data.get("secret_key") and "tag_secret" not in cache:
                cache["tag_secret"] = data["secret_key"]
            if cache:
                data = {**data, "cache": cache}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init kwargs.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        for name, dep in self.deployments.items():
            if dep.provider not in self.providers:
                raise ValueError(
                    f"deployments.{name}.provider: unknown provider {dep.provider!r} "
                    f"(configured: {', '.join(sorted(self.providers)) or 'none'})"
                )
            if dep.vision and (dep.kind != "chat" or self.providers[dep.provider].type == "local"):
                raise ValueError(
                    f"deployments.{name}.vision: only a chat model that reads images can "
                    "declare vision (the local llama.cpp provider reads text only)"
                )
        for name, route in self.models.items():
            if name in self.deployments:
                raise ValueError(f"models.{name}: name is already used by a deployment")
            for dep_name in route.deployments:
                dep_cfg = self.deployments.get(dep_name)
                if dep_cfg is None:
                    raise ValueError(f"models.{name}.deployments: unknown deployment {dep_name!r}")
                if dep_cfg.kind != "chat":
                    raise ValueError(
                        f"models.{name}.deployments: {dep_name!r} is an embedding deployment"
                        if dep_cfg.kind == "embedding"
                        else f"models.{name}.deployments: {dep_name!r} is a transcription model"
                    )
            for weighted in route.weights:
                if weighted not in route.deployments:
                    raise ValueError(
                        f"models.{name}.weights: {weighted!r} is not one of its deployments"
                    )
            for target in route.fallbacks:
                if target not in self.models and target not in self.deployments:
                    raise ValueError(
                        f"models.{name}.fallbacks: unknown model or deployment {target!r}"
                    )
                if target in self.deployments and self.deployments[target].kind != "chat":
                    raise ValueError(
                        f"models.{name}.fallbacks: {target!r} is an embedding deployment"
                    )
        self._check_fallback_cycles()
        for name, route in self.models.items():
            try:
                self.cache.with_overrides(route.cache)
            except ValueError as exc:
                raise ValueError(f"models.{name}.cache: {exc}") from None
        default_embed = self.embeddings.default_model
        if default_embed is not None:
            dep_cfg = self.deployments.get(default_embed)
            if dep_cfg is None or dep_cfg.kind != "embedding":
                raise ValueError(
                    f"embeddings.default_model: {default_embed!r} is not an embedding deployment"
                )
        self._check_instances()
        knowledge = self.knowledge
        shared_index = knowledge.backend == "qdrant" and knowledge.qdrant_url is not None
        if self.server.worker_count > 1 and default_embed is not None and not shared_index:
            raise ValueError(
                f"server.workers: {self.server.worker_count} workers cannot share the embedded "
                "knowledge index (one writer per index); use workers: 1, or knowledge.backend: "
                "qdrant with knowledge.qdrant_url, or embeddings.default_model: null to run "
                "without a knowledge base"
            )
        return self

    def _check_instances(self) -> None:
        check_instances(
            self.server.instances,
            memory_cache=self.cache.enabled and self.cache.backend == "memory",
            redis_url=self.redis_url,
            database_url=self.database_url,
            has_secret=self.secret_key is not None,
            memory_jobs=self.jobs.backend == "memory",
        )

    def instance_warnings(self) -> list[str]:
        k, on = self.knowledge, self.embeddings.default_model is not None
        return instance_warnings(self.server.instances, on, k.backend, k.qdrant_url)

    def _check_fallback_cycles(self) -> None:
        """Refuse fallback chains between logical models that loop back on themselves."""
        done: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            if name in path:
                cycle = " -> ".join([*path[path.index(name) :], name])
                raise ValueError(f"models.{path[0]}.fallbacks: cycle {cycle}")
            if name in done:
                return
            for target in self.models[name].fallbacks:
                if target in self.models:
                    visit(target, [*path, name])
            done.add(name)

        for name in self.models:
            visit(name, [])

    @property
    def is_loopback(self) -> bool:
        return self.server.host in {"127.0.0.1", "localhost", "::1"} or self.server.host.startswith(
            "127."
        )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str, env: dict[str, str] | os._Environ[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _expand_env(v, f"{where}.{k}" if where else str(k), env) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return env[name]

        return _ENV_REF.sub(sub, value)
    return value


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of settings")
    return data


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        if msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
            lines.append(msg if not loc else f"{loc}: {msg}")
            continue
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, an optional YAML file and the environment."""
    data = _read_yaml(files("iatros").joinpath("defaults.yaml").read_text(), "defaults.yaml")
    config_path = path if path is not None else os.environ.get("IATROS_CONFIG")
    if config_path:
        file = Path(config_path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        data.update(_read_yaml(file.read_text(encoding="utf-8"), str(file)))
    if overrides:
        data.update(overrides)
    data = _expand_env(data, "", os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    _check_secrets(settings)
    if (
        settings.admin_key is None
        and not settings.is_loopback
        and settings.allow_anonymous_loopback
    ):
        # Anonymous access is a loopback convenience only; on a network bind it is refused.
        raise ConfigError(
            f"server.host: {settings.server.host!r} is not a loopback address and no "
            "IATROS_ADMIN_KEY is set; refusing to serve without authentication"
        )
    return settings


ADMIN_KEY_MIN_CHARS = 32
ADMIN_KEY_MIN_DISTINCT = 8
SECRET_KEY_MIN_CHARS = 16


def _check_secrets(settings: Settings) -> None:
    """Refuse guessable keys: the admin key opens every tenant, the secret keys the audit.

    An admin key must be at least 32 printable ASCII characters without spaces, with at
    least 8 different ones (``openssl rand -hex 32`` or ``python -c "import secrets;
    print(secrets.token_urlsafe(32))"`` make one). An empty ``IATROS_ADMIN_KEY=`` is an
    error, not "no key": it is what a deployment template leaves when a variable is missing.
    """
    if settings.admin_key is not None:
        key = settings.admin_key.get_secret_value()
        problem = None
        if not key:
            problem = "is empty (unset it to have no admin key)"
        elif len(key) < ADMIN_KEY_MIN_CHARS:
            problem = f"has {len(key)} characters; at least {ADMIN_KEY_MIN_CHARS} are required"
        elif not all(33 <= ord(c) <= 126 for c in key):
            problem = "may only hold printable ASCII characters, without spaces"
        elif len(set(key)) < ADMIN_KEY_MIN_DISTINCT:
            problem = (
                f"uses {len(set(key))} different characters; at least "
                f"{ADMIN_KEY_MIN_DISTINCT} are required"
            )
        if problem is not None:
            raise ConfigError(
                f"admin_key (IATROS_ADMIN_KEY) {problem}. Generate one with: "
                "openssl rand -hex 32"
            )
    for name, value in (
        ("secret_key (IATROS_SECRET_KEY)", settings.secret_key),
        ("secret_keys_old (IATROS_SECRET_KEYS_OLD)", settings.secret_keys_old),
    ):
        if value is None:
            continue
        raw = value.get_secret_value()
        parts = [p.strip() for p in raw.split(",") if p.strip()] if "old" in name else [raw]
        for part in parts:
            if len(part) < SECRET_KEY_MIN_CHARS:
                raise ConfigError(
                    f"{name}: each secret key needs at least {SECRET_KEY_MIN_CHARS} characters "
                    "(it keys the audit chain); generate one with: openssl rand -hex 32"
                )
