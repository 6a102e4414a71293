"""Entry-point plugins: one loader for every extension group, built-ins included.

Iatros's own cache backends, knowledge backends, document parsers and tools register
through the same ``[project.entry-points."iatros.…"]`` groups a third-party package
uses (like ``iatros.providers``), so a plugin is never a special case. A plugin that
fails to import or to build is logged and skipped, never a crash at start: one broken
package must not take the gateway down. :func:`plugin_report` says what was loaded and
what was skipped and why (for ``/readyz`` or an ``iatros plugins`` command).

Two ways to load, because groups differ:

* :func:`load_group` imports every entry point of a group (parsers, tools: all of them
  are wanted at once);
* :func:`load_one` imports only the named one (backends: one is configured, and the
  others may import heavy or missing libraries that this process never needs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Literal, TypeVar

log = logging.getLogger("iatros.plugins")

T = TypeVar("T")

CACHE_BACKENDS = "iatros.cache_backends"
KNOWLEDGE_BACKENDS = "iatros.knowledge_backends"
PARSERS = "iatros.parsers"
TOOLS = "iatros.tools"
PROVIDERS = "iatros.providers"
GROUPS = (PROVIDERS, CACHE_BACKENDS, KNOWLEDGE_BACKENDS, PARSERS, TOOLS)


class PluginError(Exception):
    """A plugin that was asked for by name could not be loaded (the message says why)."""


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """What happened to one entry point: loaded, or skipped with the reason."""

    group: str
    name: str
    target: str
    """The entry point's ``module:attribute`` (where to look when it is skipped)."""
    state: Literal["loaded", "skipped", "available"]
    error: str | None = None
    distribution: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "group": self.group,
            "name": self.name,
            "target": self.target,
            "state": self.state,
            "error": self.error,
            "distribution": self.distribution,
        }


_lock = threading.Lock()
_status: dict[tuple[str, str], PluginStatus] = {}


def available(group: str) -> list[str]:
    """The names registered in ``group`` (nothing is imported)."""
    return sorted({ep.name for ep in entry_points(group=group)})


def check_registered(group: str, name: str, what: str) -> str:
    """``name`` if it is registered in ``group`` (for settings validators); else ValueError.

    With no entry point at all in the group (the package is not installed, e.g. a source
    tree on ``sys.path``) nothing can be checked, so nothing is refused.
    """
    known = available(group)
    if known and name not in known:
        raise ValueError(f"unknown {what} {name!r} (registered: {', '.join(known)})")
    return name


def _distribution(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else str(dist.name)


def _record(ep: EntryPoint, group: str, error: BaseException | None) -> PluginStatus:
    status = PluginStatus(
        group=group,
        name=ep.name,
        target=ep.value,
        state="loaded" if error is None else "skipped",
        error=None if error is None else f"{type(error).__name__}: {error}",
        distribution=_distribution(ep),
    )
    with _lock:
        _status[(group, ep.name)] = status
    if error is not None:
        # The exception's text names a module or an attribute, never request data.
        log.warning(
            "plugin skipped",
            extra={"group": group, "plugin": ep.name, "target": ep.value, "error": status.error},
        )
    return status


class _Skipped:
    """Marker: the plugin failed to load (already recorded and logged)."""


_SKIPPED = _Skipped()


def _load(ep: EntryPoint, group: str, build: Callable[[object], T] | None) -> T | _Skipped:
    try:
        obj = ep.load()
        value: T = build(obj) if build is not None else obj
    except Exception as exc:  # any failure of a plugin means "skip it"
        _record(ep, group, exc)
        return _SKIPPED
    _record(ep, group, None)
    return value


def load_group(group: str, build: Callable[[object], T] | None = None) -> dict[str, T]:
    """Import every entry point of ``group``; broken ones are logged and skipped.

    Args:
        group: the entry-point group, e.g. :data:`PARSERS`.
        build: turns the loaded object into the plugin (and checks it); an exception
            here skips the plugin like an import error does. Without it the loaded
            object is the plugin.

    Returns:
        name -> plugin, for the plugins that loaded. When two distributions register
        the same name, the first one found wins and the other is reported as skipped.
    """
    loaded: dict[str, T] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.name in loaded:
            _record(ep, group, PluginError(f"duplicate name {ep.name!r} in {group}"))
            continue
        value = _load(ep, group, build)
        if not isinstance(value, _Skipped):
            loaded[ep.name] = value
    return loaded


def load_one(group: str, name: str, build: Callable[[object], T] | None = None) -> T:
    """Import the entry point ``name`` of ``group`` only.

    Raises:
        PluginError: no such plugin (the message lists the registered ones), or it
            failed to import or build (the message gives the error). The caller asked
            for this one by configuration, so it cannot simply be skipped.
    """
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        names = ", ".join(available(group)) or "none"
        raise PluginError(f"unknown {group} plugin {name!r} (registered: {names})")
    value = _load(found[0], group, build)
    if isinstance(value, _Skipped):
        status = _status.get((group, name))
        raise PluginError(
            f"{group} plugin {name!r} ({found[0].value}) could not be loaded: "
            f"{status.error if status else 'unknown error'}"
        )
    return value


def plugin_report() -> list[PluginStatus]:
    """Every entry point loaded or skipped so far in this process, by group and name."""
    with _lock:
        return [_status[key] for key in sorted(_status)]


def inventory() -> list[PluginStatus]:
    """Every entry point of every Iatros group: loaded, skipped, or ``available`` (registered,
    not imported yet: backends and providers are imported only when configured).

    What ``iatros plugins`` or ``/readyz`` can show without importing anything.
    """
    seen = {(s.group, s.name): s for s in plugin_report()}
    out: list[PluginStatus] = []
    for group in GROUPS:
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            status = seen.get((group, ep.name))
            out.append(
                status
                if status is not None
                else PluginStatus(group, ep.name, ep.value, "available", None, _distribution(ep))
            )
    return out


def reset_report() -> None:
    """Forget what was loaded (tests)."""
    with _lock:
        _status.clear()
