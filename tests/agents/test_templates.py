"""Templates: the published schema, migrations, and precise errors for bad templates.

Every bad template names its file, line and field; the gallery loads cleanly.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import jsonschema_rs
import pytest
import yaml

from iatros.agents import spec as spec_module
from iatros.agents.loader import Checks, TemplateError, load
from iatros.agents.spec import SCHEMA_VERSION, json_schema
from iatros.tools import load_tools

TOOLS = load_tools()
GALLERY = files("iatros.agents").joinpath("gallery")


def checks(enabled: set[str] | None = None, tool_calling: bool | None = True) -> Checks:
    return Checks(TOOLS, set(TOOLS) if enabled is None else enabled, {},
                  lambda route: tool_calling)  # fmt: skip


def problems(text: str, c: Checks | None = None) -> list[str]:
    with pytest.raises(TemplateError) as caught:
        load(text, "bad.yaml", c or checks())
    return [str(p) for p in caught.value.problems]


AGENT = """\
kind: agent
name: helper
model: assistant
instructions: Help with {{ topic }}.
variables: {topic: teeth}
tools: [dose_by_weight]
"""

WORKFLOW = """\
kind: workflow
name: flow
agents:
  a:
    kind: agent
    name: a
    model: assistant
    instructions: Say hello.
    output_schema:
      type: object
      properties: {urgency: {type: string}}
steps:
  - id: first
    agent: a
  - id: second
    tool: datetime_now
    arguments: {timezone: "${steps.first.output.urgency}"}
"""


def test_the_published_schema_accepts_every_gallery_template() -> None:
    schema = json_schema()
    assert schema["$id"].endswith("agent.json")
    validator = jsonschema_rs.validator_for(schema)
    names = sorted(p.name for p in GALLERY.iterdir() if p.name.endswith(".yaml"))
    assert names == ["dental-triage.yaml", "drug-interaction.yaml", "literature-review.yaml",
                     "post-visit.yaml", "practice-faq.yaml"]
    for name in names:
        text = GALLERY.joinpath(name).read_text()
        assert validator.is_valid(yaml.safe_load(text)), name
        assert load(text, name, checks()).spec.version == SCHEMA_VERSION
    assert not validator.is_valid({"kind": "agent", "name": "x"})  # no model, instructions


def test_a_good_agent_and_workflow_load_and_digests_are_stable() -> None:
    one = load(AGENT, "a.yaml", checks())
    two = load(AGENT + "\n# a comment changes nothing\n", "a.yaml", checks())
    assert one.digest == two.digest
    assert load(WORKFLOW, "w.yaml", checks()).spec.kind == "workflow"


def test_unknown_tool_names_file_line_and_field() -> None:
    found = problems(AGENT.replace("[dose_by_weight]", "[dose_by_weight, shell_exec]"))
    assert found == [
        "bad.yaml:6: tools[1]: unknown tool 'shell_exec' (installed: datetime_now, "
        "dental_red_flags, dose_by_weight, http_get, knowledge_search, review_ask, scribe_note)"
    ]


def test_a_tool_the_tenant_has_not_enabled_is_refused() -> None:
    found = problems(AGENT, checks(enabled={"datetime_now"}))
    assert found == ["bad.yaml:6: tools[0]: tool 'dose_by_weight' is not enabled for this tenant"]


def test_free_tool_choice_on_a_model_without_tool_calling_is_refused() -> None:
    (found,) = problems(AGENT, checks(tool_calling=False))
    assert found.startswith("bad.yaml:6: tools: the model route 'assistant' has a deployment")


def test_schema_violations_name_the_line() -> None:
    text = AGENT.replace("model: assistant", "model: assistant\nlimits: {max_steps: 0}")
    assert problems(text) == ["bad.yaml:4: limits.max_steps: Input should be greater than or "
                              "equal to 1"]  # fmt: skip
    assert problems(AGENT + "colour: blue\n") == ["bad.yaml:7: colour: unknown field"]
    text = WORKFLOW.replace("    tool: datetime_now\n", "    tool: datetime_now\n    agent: a\n")
    (found,) = problems(text)
    assert found.startswith("bad.yaml:15: steps[1]: a step has exactly one of agent, tool")


def test_version_too_new_and_migrations() -> None:
    assert problems("version: 7\n" + AGENT) == [
        f"bad.yaml:1: version: version 7 is newer than this Iatros reads (up to "
        f"{SCHEMA_VERSION}): upgrade Iatros or write the template for this version"
    ]
    assert problems("version: 0\n" + AGENT)[0].startswith("bad.yaml:1: version: must be")


def test_a_migration_hook_upgrades_an_old_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """A future format change is an entry in MIGRATIONS; simulate version 2 renaming a field."""

    def v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
        doc = dict(doc)
        doc["instructions"] = doc.pop("prompt")
        return doc

    monkeypatch.setattr(spec_module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(spec_module.MIGRATIONS, 1, v1_to_v2)
    import iatros.agents.loader as loader_module

    monkeypatch.setattr(loader_module, "SCHEMA_VERSION", 2)
    old = "version: 1\n" + AGENT.replace("instructions:", "prompt:")
    loaded = load(old, "old.yaml", checks())
    assert loaded.spec.version == 2
    assert loaded.spec.instructions == "Help with {{ topic }}."


def test_bad_references_are_precise() -> None:
    typo = WORKFLOW.replace("output.urgency", "output.urgncy")
    assert problems(typo) == [
        "bad.yaml:17: steps[1].arguments.timezone: ${steps.first.output.urgncy}: "
        "steps.first.output has no field 'urgncy' (its output schema has: urgency)"
    ]
    missing = WORKFLOW.replace("steps.first.output", "steps.zeroth.output")
    assert problems(missing) == [
        "bad.yaml:17: steps[1].arguments.timezone: ${steps.zeroth.output.urgency}: "
        "no step ['zeroth']"
    ]
    forward = '    agent: a\n    input: "${steps.third.output}"\n'
    later = WORKFLOW.replace("    agent: a\n", forward)
    later += "  - id: third\n    tool: datetime_now\n"
    assert problems(later) == [
        "bad.yaml:13: steps[0]: refers to step 'third', which runs after it"
    ]
    unknown_agent = WORKFLOW.replace("    agent: a\n", "    agent: b\n")
    assert problems(unknown_agent) == [
        "bad.yaml:14: steps[0].agent: unknown agent 'b' (define it under 'agents' or apply it "
        "first)"
    ]


def test_a_cycle_between_steps_is_named() -> None:
    text = """\
kind: workflow
name: loop-de-loop
agents:
  a: {kind: agent, name: a, model: assistant, instructions: hi}
steps:
  - id: one
    agent: a
    input: "${steps.two.output}"
  - id: two
    agent: a
    input: "${steps.one.output}"
"""
    assert problems(text) == ["bad.yaml:6: steps[0]: a cycle: one -> two -> one"]


def test_literal_tool_arguments_are_checked_against_the_tool_schema() -> None:
    text = WORKFLOW.replace('{timezone: "${steps.first.output.urgency}"}', "{timezone: 5}")
    assert problems(text) == [
        'bad.yaml:17: steps[1].arguments.timezone: does not fit the tool: 5 is not of type "string"'
    ]


def test_yaml_syntax_errors_have_a_line() -> None:
    (found,) = problems("kind: agent\nname: [unclosed\n")
    assert found.startswith("bad.yaml:3: (document): not valid YAML/JSON")


def test_json_templates_have_lines_too() -> None:
    text = (
        '{\n  "kind": "agent",\n  "name": "j",\n  "model": "assistant",\n'
        '  "instructions": "x",\n  "tools": ["nope"]\n}\n'
    )
    (found,) = problems(text)
    assert found.startswith("bad.yaml:6: tools[0]: unknown tool 'nope'")
