"""The model picker says what each model is for (#25): the route's description, as the admin
wrote it in the configuration, under the picker and in each option's tooltip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer
from tests.web.conftest import sign_in, web_config


def test_the_picker_describes_the_chosen_model(
    server_factory: Callable[..., RunningServer],
    new_page: Callable[..., Any],
    fake_upstream: FakeUpstream,
) -> None:
    config = web_config(fake_upstream)
    config["models"]["assistant"]["description"] = "General questions about the practice"
    config["models"]["quick"] = {"deployments": ["fake-gpt"]}
    server = server_factory(config)
    server.wait_ready()
    page = new_page()
    sign_in(page, server)
    page.locator("#model-select").select_option("assistant")
    line = page.locator("#model-description")
    assert line.inner_text() == "General questions about the practice"
    assert page.locator("#model-select").get_attribute("aria-describedby") == "model-description"
    option = page.locator("#model-select option[value=assistant]")
    assert option.get_attribute("title") == "General questions about the practice"
    page.locator("#model-select").select_option("quick")  # no description: no line
    assert line.is_hidden()
