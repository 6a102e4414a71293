"""What every ``iatros`` command shares: the consoles, the common options, settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from iatros.config import ConfigError, Settings, load_settings

err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console() if sys.stdout.isatty() else Console(width=220)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (or IATROS_CONFIG).")
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="A running Iatros server (or IATROS_URL). Without it: in-process."),
]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="API key (or IATROS_API_KEY).", envvar="IATROS_API_KEY")
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides or None)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)
