"""Runs the examples of a documentation page against a live Iatros server.

Every fenced ``bash``, ``python`` and ``yaml`` block of a page is run (or, for YAML,
loaded as an Iatros configuration file) unless the line right before it is
``<!-- skip: why -->`` with a reason. So no example escapes the suite by being forgotten:
a new block runs unless someone wrote down why it cannot.

- The server is the one the page's reader started with ``make run``, played by a
  :class:`tests.conftest.RunningServer` on a free port with the in-process ``test``
  provider (``conftest.test_model_config``): ``127.0.0.1:8080`` in the examples becomes
  its address. A page may add settings with ``<!-- docs-server: {json} -->``.
- Blocks of a page run in order in one working directory, like a terminal session:
  shell variables carry over from one ``bash`` block to the next (``allexport``) and
  into ``python`` blocks' environment, ``.venv`` points at this interpreter's
  environment, ``deploy`` the checkout's deployment files (read-only by convention),
  ``IATROS_CONFIG`` names a file with the server's settings and
  ``IATROS_DATA_DIR`` its data directory, so ``iatros keys create`` and friends act on
  the server's own database.
- ``bash`` runs with ``set -euo pipefail``: a failing command fails the example
  (``curl --fail-with-body`` makes an HTTP error one). ``<!-- expect: text -->`` before
  a block also requires ``text`` in what it prints.
- A ``yaml`` block with ``title="name"`` is written to that file (for the next blocks);
  every ``yaml`` block must load as a configuration (``iatros.config.load_settings``), or
  as an agent template when it says ``kind: agent`` or ``kind: workflow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iatros.api.app import create_app
from iatros.config import ConfigError, load_settings
from tests.conftest import RunningServer, test_model_config

RUN_LANGUAGES = {"bash", "python", "yaml"}
DOC_PORT = re.compile(r"\b(127\.0\.0\.1|localhost):8080\b")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`\n]*)$")
COMMENT = re.compile(r"^\s*<!--\s*(?P<kind>skip|expect|docs-server)\s*:\s*(?P<arg>.*?)\s*-->\s*$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
BLOCK_TIMEOUT_S = 120
CHECKOUT = Path(__file__).resolve().parents[2]


class ExampleFailed(AssertionError):
    """An example did not do what its page says."""


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    title: str | None = None
    skip: str | None = None
    expect: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def extract(markdown: str, page: str = "<page>") -> tuple[list[Block], dict[str, Any]]:
    """The page's code blocks (every language) and its ``docs-server`` settings."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    server: dict[str, Any] = {}
    pending: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        comment = COMMENT.match(lines[i])
        if comment:
            kind, arg = comment.group("kind"), comment.group("arg")
            if kind == "docs-server":
                server.update(json.loads(arg))
            else:
                pending.setdefault(kind, []).append(arg)
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                pending = {}  # a marker applies to the block right after it
            i += 1
            continue
        info = fence.group("info").strip()
        language = info.split()[0] if info else ""
        indent, ticks = len(fence.group("indent")), fence.group("fence")
        body: list[str] = []
        start = i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i][indent:])
            i += 1
        i += 1
        title = TITLE.search(info)
        skip = pending.get("skip")
        if skip is not None and not skip[0]:
            raise ExampleFailed(f"{page}:{start}: 'skip:' needs a reason")
        blocks.append(
            Block(
                page=page,
                line=start,
                language=language,
                code="\n".join(body) + "\n",
                title=title.group("title") if title else None,
                skip=skip[0] if skip else None,
                expect=pending.get("expect", []),
            )
        )
        pending = {}
    return blocks, server


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.language in RUN_LANGUAGES and b.skip is None]


def server_settings(data_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The page's server: the in-process test model, plus what the page adds."""
    settings = test_model_config(data_dir)
    settings["models"] = {"assistant": {"deployments": ["t-chat"]}}
    # The test provider embeds by feature hashing, whose scores run lower than MiniLM's:
    # knowledge.min_score's default (0.5) is calibrated for MiniLM, 0.3 plays its part here
    # (as in tests/test_chat_service.py).
    settings["knowledge"] = {"min_score": 0.3}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


@contextmanager
def live_server(workdir: Path, extra: dict[str, Any]) -> Iterator[RunningServer]:
    overrides = server_settings(workdir / "data", extra)
    settings = load_settings(overrides=overrides)
    running = RunningServer(settings, create_app(settings))
    try:
        running.wait_ready(60)
        (workdir / "iatros-test.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
        yield running
    finally:
        running.stop()


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
    env["IATROS_CONFIG"] = str(workdir / "iatros-test.yaml")
    env["IATROS_DATA_DIR"] = str(workdir / "data")  # the server's (``make run``: ./data)
    env["PATH"] = f"{workdir / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    return env


def run_block(block: Block, workdir: Path, port: int, sessions: list[int]) -> str:
    """Run one block in ``workdir`` against the server on ``port``; return what it printed.

    The process group of each block is added to ``sessions`` (see :func:`end_sessions`)."""
    code = DOC_PORT.sub(lambda m: f"{m.group(1)}:{port}", block.code)
    env = _environment(workdir)
    if block.language == "yaml":
        if block.title:
            (workdir / block.title).write_text(code, encoding="utf-8")
        return _check_config(block, code, env)
    state = shlex.quote(str(workdir / ".docs-shell-state"))
    restore = f"set -euo pipefail -o allexport\nif [ -f {state} ]; then source {state}; fi\n"
    if block.language == "bash":
        argv = ["bash", "-c", f"{restore}{code}\nexport -p > {state}\n"]
    else:  # python, with the variables the shell examples set (IATROS_API_KEY, ...)
        path = workdir / f"example_{block.line}.py"
        path.write_text(code, encoding="utf-8")
        argv = ["bash", "-c", f"{restore}exec {shlex.quote(sys.executable)} {path.name}"]
    # A session of its own: a server an example starts in the background (its output sent
    # to a file) lives on for the page's next blocks, and is ended with the page.
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sessions.append(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ExampleFailed(f"{block.where}: did not finish in {BLOCK_TIMEOUT_S} s") from exc
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise ExampleFailed(
            f"{block.where}: {block.language} example exited {done.returncode}\n"
            f"--- example ---\n{code}--- output ---\n{output}"
        )
    for text in block.expect:
        if text not in output:
            raise ExampleFailed(
                f"{block.where}: expected {text!r} in the output\n--- output ---\n{output}"
            )
    return output


def _check_config(block: Block, code: str, env: dict[str, str]) -> str:
    """A configuration example must load; ``${NAME}`` references get a placeholder value.

    An agent or workflow template (``kind: agent`` or ``workflow`` at the top) is checked
    against the template models instead; the page's ``iatros agents apply`` checks the rest
    (tools, references) against its server."""
    loaded = yaml.safe_load(code)
    if isinstance(loaded, dict) and loaded.get("kind") in ("agent", "workflow"):
        from iatros.agents.loader import TemplateError, parse

        try:
            parse(code, block.title or block.where)
        except TemplateError as exc:
            raise ExampleFailed(f"{block.where}: the template does not load: {exc}") from exc
        return ""
    names = set(re.findall(r"\$\{(\w+)\}", code))
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(code)
    try:
        for name in names:
            os.environ[name] = env.get(name) or f"placeholder-for-{name.lower()}-0123456789"
        load_settings(tmp.name)
    except ConfigError as exc:
        raise ExampleFailed(f"{block.where}: the configuration does not load: {exc}") from exc
    finally:
        os.unlink(tmp.name)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return ""


def run_page(markdown: str, page: str, workdir: Path) -> int:
    """Run every example of a page; return how many ran. Raises :class:`ExampleFailed`."""
    with page_session(markdown, page, workdir) as (_, ran):
        return ran


@contextmanager
def page_session(markdown: str, page: str, workdir: Path) -> Iterator[tuple[RunningServer, int]]:
    """Run a page's examples, then hand over its live server (and how many examples ran):
    a browser test can go on where the page's reader goes on."""
    blocks, extra = extract(markdown, page)
    todo = runnable(blocks)
    workdir.mkdir(parents=True, exist_ok=True)
    venv = workdir / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    shipped = workdir / "deploy"  # the checkout's deployment files, read by the examples
    if not shipped.exists():
        shipped.symlink_to(CHECKOUT / "deploy", target_is_directory=True)
    sessions: list[int] = []
    try:
        with live_server(workdir, extra) as server:
            for block in todo:
                run_block(block, workdir, server.port, sessions)
            yield server, len(todo)
    finally:
        end_sessions(sessions)


def shell_variable(workdir: Path, name: str) -> str:
    """A variable the page's shell examples set (``IATROS_API_KEY``, ...)."""
    state = (workdir / ".docs-shell-state").read_text(encoding="utf-8")
    match = re.search(rf'^declare -x {re.escape(name)}="(.*)"$', state, re.M)
    if match is None:
        raise KeyError(name)
    return match.group(1)


def end_sessions(sessions: list[int]) -> None:
    """End what the page's examples left running (their own process groups only)."""
    for pgid in sessions:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
