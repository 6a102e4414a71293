"""LiteLLM, the gateway Iatros is compared with: installed into its own venv, started offline.

LiteLLM's proxy pulls in a large, conflicting dependency set, so it lives in
``bench/.peers/`` (git-ignored), never in the project's venv. The install is done
once and reused; its time is recorded separately and is not part of the suite's
elapsed time. The proxy is started in its own process group so that every worker
it forks is measured (CPU, RSS of the whole tree) and killed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from procs import Processes, Server, StartupError, free_port

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
LITELLM_PIN = "1.106.2"
LITELLM_BAD = ("1.107.0",)
"""Never installed: 1.107.0 was a compromised release."""
LITELLM_KEY = "sk-litellm-bench-master"
UPSTREAM_MODEL = "fake-model"


@dataclass(frozen=True)
class Peer:
    """An installed peer gateway: its interpreter, version and how it got there."""

    name: str
    python: Path
    version: str
    pinned: bool
    install_s: float
    """Seconds spent installing in this run (0.0 when reused from bench/.peers)."""
    install_log: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "pinned": self.pinned,
            "pin": LITELLM_PIN,
            "install_s": self.install_s,
            "python": str(self.python),
            "venv": str(self.python.parent.parent),
        }


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, litellm.proxy.proxy_server; "
            "print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in {**os.environ, **litellm_env()}.items() if k not in UNSET_ENV},
    )
    return probe.stdout.strip() or None if probe.returncode == 0 else None


def ensure_litellm(log_dir: Path) -> Peer:
    """The LiteLLM venv, installing ``litellm[proxy]`` (pinned, else the newest) if needed.

    Raises ``RuntimeError`` with the end of pip's output when neither can be installed.
    """
    venv = PEERS_DIR / "litellm"
    python = venv / "bin" / "python"
    log_path = log_dir / "litellm-install.log"
    version = _installed_version(python)
    if version is not None:
        return Peer("litellm", python, version, version == LITELLM_PIN, 0.0, str(log_path))
    started = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            check=False,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        excluded = ",".join(f"!={v}" for v in LITELLM_BAD)
        for requirement in (f"litellm[proxy]=={LITELLM_PIN}", f"litellm[proxy]{excluded}"):
            log.write(f"\n$ pip install {requirement}\n".encode())
            log.flush()
            done = subprocess.run(
                [*pip, requirement], check=False, stdout=log, stderr=subprocess.STDOUT
            )
            if done.returncode == 0:
                break
    version = _installed_version(python)
    if version is None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"could not install litellm[proxy] into {venv}:\n{tail}")
    return Peer(
        "litellm",
        python,
        version,
        version == LITELLM_PIN,
        round(time.perf_counter() - started, 1),
        str(log_path),
    )


UNSET_ENV = ("DATABASE_URL", "DIRECT_URL", "REDIS_HOST", "REDIS_URL", "LITELLM_MASTER_KEY")
"""Never inherited: LiteLLM would use a database or a Redis it finds in the environment."""


def litellm_env() -> dict[str, str]:
    """Offline and quiet: local cost map, no telemetry; the database is unset (UNSET_ENV)."""
    return {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }


def litellm_config(upstream: Server, model: str) -> dict[str, Any]:
    """One model in front of the fake upstream; the local cache exists but is opt-in.

    ``cache_params.mode: default_off`` keeps pass-through requests uncached (LiteLLM's
    default, its fastest path) while a request with ``{"cache": {"use-cache": true}}``
    in its body is looked up and stored: one server serves both kinds of cells.
    """
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": f"{upstream.url}/v1",
                    "api_key": "sk-fake",
                },
            }
        ],
        "litellm_settings": {
            "cache": True,
            "cache_params": {"type": "local", "mode": "default_off"},
            "telemetry": False,
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": {"master_key": LITELLM_KEY},
    }


def start_litellm(
    procs: Processes,
    peer: Peer,
    name: str,
    upstream: Server,
    model: str,
    workers: int,
    *,
    timeout_s: float = 180.0,
    attempts: int = 2,
) -> Server:
    """``litellm --config X --port P --num_workers N`` in its own process group."""
    config = litellm_config(upstream, model)
    config_path = procs.workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    (procs.workdir / f"{name}.json").write_bytes(orjson.dumps(config))
    litellm_bin = peer.python.parent / "litellm"
    for attempt in range(attempts):
        port = free_port()
        command = [
            str(litellm_bin),
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ]
        try:
            return procs.start(
                name,
                command,
                port,
                "/health/liveliness",
                env=litellm_env(),
                timeout_s=timeout_s,
                new_session=True,
                unset_env=UNSET_ENV,
            )
        except StartupError as exc:
            if attempt == attempts - 1 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")
