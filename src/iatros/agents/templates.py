"""Applying and checking templates for a tenant: what the API and ``iatros agents apply``
share, without the run machinery (so the CLI needs only the store and the tools)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iatros.agents.loader import Checks, Loaded, TemplateError, load
from iatros.agents.settings import AgentSettings
from iatros.agents.spec import AgentSpec
from iatros.agents.store import AgentStore
from iatros.auth import Principal
from iatros.config import Settings
from iatros.governance.service import Governance
from iatros.tools import Tool, permission


def tool_calling(settings: Settings, agents: AgentSettings, route: str) -> bool | None:
    """Whether every deployment of ``route`` takes OpenAI ``tools`` (None: no such route)."""
    config = settings.models.get(route)
    if config is None:
        return None
    for name in config.deployments:
        deployment = settings.deployments.get(name)
        provider = settings.providers.get(deployment.provider) if deployment else None
        if provider is None or provider.type not in agents.tool_calling_providers:
            return False
    return True


class Templates:
    def __init__(
        self, settings: Settings, governance: Governance, store: AgentStore,
        tools: dict[str, Tool],
    ) -> None:  # fmt: skip
        self.settings = settings
        self.config: AgentSettings = settings.agents
        self.governance = governance
        self.store = store
        self.tools = tools
        self.applied = 0
        """Counts templates stored by this process (caches of parsed templates check it)."""
        self.tool_calling: Callable[[str], bool | None] = lambda route: tool_calling(
            settings, self.config, route
        )

    def enabled_tools(self, tenant: str) -> list[str]:
        return list(self.config.tenant_tools.get(tenant, self.config.default_tools))

    async def checks(self, tenant: str) -> Checks:
        agents: dict[str, AgentSpec] = {}
        for row in await self.store.templates(tenant):
            if row["kind"] == "agent":
                agents[row["name"]] = AgentSpec.model_validate(row["spec"])
        return Checks(self.tools, set(self.enabled_tools(tenant)), agents, self.tool_calling)

    def tool_list(self, tenant: str) -> list[dict[str, Any]]:
        enabled = set(self.enabled_tools(tenant))
        return [
            {"name": t.name, "description": t.description, "parameters": t.parameters,
             "permission": permission(t), "enabled": t.name in enabled}
            for t in sorted(self.tools.values(), key=lambda t: t.name)
        ]  # fmt: skip

    async def validate(self, tenant: str, text: str, source: str) -> Loaded:
        return load(text, source, await self.checks(tenant))

    async def apply(
        self, principal: Principal, text: str, source: str
    ) -> tuple[dict[str, Any], bool]:
        """Store a template (a new version unless it is unchanged); audited."""
        tenant = principal.tenant
        try:
            loaded = await self.validate(tenant, text, source)
        except TemplateError:
            self.governance.audit(tenant=tenant, actor=principal.key_id,
                                  action="agents.template.apply", target=source[:128],
                                  outcome="refused")  # fmt: skip
            raise
        spec = loaded.spec
        applied = await self.store.save_template(
            tenant, spec.name, spec.kind, loaded.document, loaded.digest, source, principal.key_id
        )
        self.applied += 1
        self.governance.audit(
            tenant=tenant, actor=principal.key_id, action="agents.template.apply",
            target=spec.name, outcome="created" if applied.created else "unchanged",
            details={"version": applied.payload["version"], "kind": spec.kind},
        )  # fmt: skip
        return applied.payload, applied.created
