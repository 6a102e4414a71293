"""Agents and workflows from templates: specs, tools, runs, approvals.

Kept free of imports so that ``iatros.agents.settings`` can be read by the settings
module without pulling in the engine. The pieces:

- :mod:`.spec` — the pydantic models of a template (the published JSON Schema);
- :mod:`.loader` — YAML/JSON with line marks, migrations, references checked at load time;
- :mod:`.builtin_tools` — the tools Iatros ships, registered through ``iatros.tools``;
- :mod:`.runner` — one agent: model calls through ``ChatService``, tool calls, output checks;
- :mod:`.workflow` — a workflow's steps, replayed from their persisted records;
- :mod:`.service` — templates, runs, approvals and the resume loop.
"""
