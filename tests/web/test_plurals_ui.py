"""Plurals (#25): counts follow the language's CLDR rules (Intl.PluralRules), so French says
"0 erreur" and "1 annulée", English "1 error" and "0 errors"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.web.conftest import sign_in

CASES = {
    "en": {
        ("dash.errors_n", 0): "0 errors",
        ("dash.errors_n", 1): "1 error",
        ("dash.requests_n", 2): "2 requests",
        ("dash.cancelled", 1): "1 cancelled by the client",
        ("chat.sources", 1): "1 source",
    },
    "fr": {
        ("dash.errors_n", 0): "0 erreur",
        ("dash.errors_n", 1): "1 erreur",
        ("dash.errors_n", 2): "2 erreurs",
        ("dash.requests_n", 1): "1 requête",
        ("dash.cancelled", 1): "1 annulée par le client",
        ("dash.cancelled", 3): "3 annulées par le client",
    },
}


@pytest.mark.parametrize("lang", list(CASES))
def test_counts_take_the_plural_of_the_language(
    web_server: RunningServer, new_page: Callable[..., Any], lang: str
) -> None:
    page = new_page()
    sign_in(page, web_server, lang=lang)
    for (key, n), expected in CASES[lang].items():
        got = page.evaluate(
            "([key, n]) => import('/static/js/i18n.js').then((m) => m.tn(key, n))", [key, n]
        )
        assert got == expected, (key, n)


def test_the_dashboard_summary_uses_plurals_in_french(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    sign_in(page, web_server, lang="fr")
    page.goto(web_server.url + "/#/dashboard")
    chart = page.locator("[data-chart=requests] svg[role=img]").first
    chart.wait_for()
    summary = chart.get_attribute("aria-label") or ""
    assert "sur la période" in summary
    assert "0 erreurs" not in summary and "1 erreurs" not in summary
    assert "1 requêtes" not in summary
