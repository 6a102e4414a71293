"""Completion-style prompts for base (non-chat) models such as Gemma 3 270M.

A base model continues text; it has no chat template. We lay the conversation
out as a short transcript with a one-line brief and a worked example, end with
``Assistant:`` and stop as soon as the model starts writing the next turn.
"""

from __future__ import annotations

from typing import Any

from iatros.errors import InvalidRequest

DEFAULT_BRIEF = (
    "The following is a conversation with a careful clinical assistant. "
    "It answers in one or two short, factual sentences and says when it does not know."
)
EXAMPLE = (
    "User: What is the normal body temperature of an adult?\n"
    "Assistant: About 37 °C (98.6 °F), usually between 36.1 °C and 37.2 °C.\n"
)
STOP_SEQUENCES = ["\nUser:", "\nAssistant:", "\nSystem:", "\n\n\n", "<end_of_turn>"]
_LABELS = {
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool result",
    "function": "Tool result",
}


def message_text(message: dict[str, Any], *, where: str) -> str:
    """Flatten OpenAI content (a string or a list of parts) to text; refuse non-text parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise InvalidRequest(
                f"{where}: content part type {part.get('type')!r} is not supported by this model",
                param=f"messages.content.{i}.type",
                code="unsupported_content",
            )
        parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def build_prompt(messages: list[dict[str, Any]], *, where: str = "local model") -> str:
    brief: list[str] = []
    turns: list[str] = []
    for message in messages:
        role = message["role"]
        text = message_text(message, where=where).strip()
        if role in ("system", "developer"):
            brief.append(text)
            continue
        turns.append(f"{_LABELS.get(role, 'User')}: {text}")
    header = "\n".join([DEFAULT_BRIEF, *brief])
    return f"{header}\n\n{EXAMPLE}" + "\n".join(turns) + "\nAssistant:"
