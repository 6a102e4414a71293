"""Provider types registered by name.

Built-in providers and third-party plugins register the same way: an entry point
in the ``iatros.providers`` group names a factory ``(name, options) -> Provider``.
Code may also call :func:`register_provider` directly (tests do).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from iatros.config import ConfigError
from iatros.providers.base import Provider

T = TypeVar("T", bound=BaseModel)
ProviderFactory = Callable[[str, dict[str, Any]], Provider]

_factories: dict[str, ProviderFactory] = {}
_entry_points_loaded = False


def register_provider(type_name: str, factory: ProviderFactory) -> None:
    """Make ``type_name`` usable as ``providers.<name>.type`` in the config."""
    _factories[type_name] = factory


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="iatros.providers"):
        if ep.name not in _factories:
            # Loaded lazily: the module imports heavy libraries only when a provider starts.
            _factories[ep.name] = _lazy(ep.load)


def _lazy(load: Callable[[], Any]) -> ProviderFactory:
    def factory(name: str, options: dict[str, Any]) -> Provider:
        real: ProviderFactory = load()
        return real(name, options)

    return factory


def provider_types() -> list[str]:
    _load_entry_points()
    return sorted(_factories)


def build_provider(name: str, type_name: str, options: dict[str, Any]) -> Provider:
    """Instantiate a configured provider; errors name ``providers.<name>``."""
    _load_entry_points()
    factory = _factories.get(type_name)
    if factory is None:
        raise ConfigError(
            f"providers.{name}.type: unknown provider type {type_name!r} "
            f"(registered: {', '.join(provider_types())})"
        )
    return factory(name, options)


def parse_options(name: str, model: type[T], options: dict[str, Any]) -> T:
    """Validate a provider's options, naming the bad key as ``providers.<name>.<key>``."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"providers.{name}.{loc}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
