"""The app in a real browser: sign-in and roles, dashboard, languages, phones, accessibility."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from iatros.testing.fake_upstream import FakeUpstream
from iatros.web import STATIC_DIR
from tests.conftest import ADMIN_KEY, RunningServer
from tests.web.conftest import ARTIFACTS, PHONE, create_key, shot, sign_in, wait_until


def chat(server: RunningServer, key: str, text: str) -> None:
    with server.http(key) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": text}]},
        )
    assert resp.status_code == 200, resp.text


def word() -> str:
    return uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))


def kpi(page: Any, name: str) -> int:
    text = page.locator(f"[data-kpi={name}] .kpi-value").inner_text()
    return int(re.sub(r"\D", "", text) or 0)


def visible_nav(page: Any) -> list[str]:
    if not page.locator("#nav").is_visible():
        return []
    return [
        link.get_attribute("data-view")
        for link in page.locator("#nav a").all()
        if link.is_visible()
    ]


def test_sign_in_shows_tenant_and_role_and_only_what_the_role_may_do(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    page.goto(web_server.url + "/")
    page.locator("#signin-key").wait_for()
    assert page.evaluate("document.activeElement.id") == "signin-key"
    shot(page, "signin")
    page.locator("#signin-key").fill("iat_not_a_key")
    page.keyboard.press("Enter")
    error = page.locator("#signin-error")
    error.wait_for()
    assert error.inner_text() == "This API key is not valid."
    assert page.locator("#signin-key").get_attribute("aria-invalid") == "true"

    clinician = create_key(web_server, tenant="clinic-roles", role="clinician")
    page.locator("#signin-key").fill(clinician["key"])
    page.keyboard.press("Enter")
    page.locator("#identity").wait_for(state="visible")
    assert page.locator("#who-tenant").inner_text() == "clinic-roles"
    assert page.locator("#who-role").inner_text() == "clinician"
    # no dashboard for a clinician
    assert visible_nav(page) == ["chat", "documents", "scribe", "radiographs", "agents"]
    assert page.locator("#view-chat").is_visible()
    page.goto(web_server.url + "/#/dashboard")  # not allowed: back to the chat
    page.locator("#view-chat").wait_for(state="visible")
    assert not page.locator("#view-dashboard").is_visible()
    page.locator("#signout").click()

    auditor = create_key(web_server, tenant="clinic-roles", role="auditor")
    page.locator("#signin-key").fill(auditor["key"])
    page.keyboard.press("Enter")
    page.locator("#view-dashboard").wait_for(state="visible")
    assert page.locator("#who-role").inner_text() == "auditor"
    assert visible_nav(page) == [
        "dashboard",
        "requests",
        "alerts",
        "feedback",
    ]  # no chat, no review queue
    assert not page.locator("#view-chat").is_visible()
    page.locator("[data-kpi=requests]").wait_for()
    assert not page.locator("#health").is_visible()  # deployments are for admins
    assert not page.locator("#dash-tenant-field").is_visible()  # one tenant only
    shot(page, "dashboard-auditor")
    page.locator("#signout").click()

    sign_in(page, web_server, ADMIN_KEY)
    assert visible_nav(page) == [
        "chat",
        "documents",
        "dashboard",
        "requests",
        "alerts",
        "reviews",
        "feedback",
        "scribe",
        "radiographs",
        "experiments",
        "agents",
    ]
    assert page.locator("#who-role").inner_text() == "administrator"


def test_dashboard_numbers_move_after_requests(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    admin = create_key(web_server, tenant="dash-clinic", role="admin")
    chat(web_server, admin["key"], "warm up " + word())
    page = new_page()
    sign_in(page, web_server, admin["key"])
    page.locator("#nav a[data-view=dashboard]").click()
    page.locator("[data-kpi=requests]").wait_for()
    before = kpi(page, "requests")
    assert before == 1
    question = "What is the dose of paracetamol " + word()
    chat(web_server, admin["key"], question)
    chat(web_server, admin["key"], question)  # a cache hit
    fake_upstream.behaviour.fail_status = 503
    with web_server.http(admin["key"]) as http:
        failed = http.post(
            "/v1/chat/completions",
            json={"model": "fake-gpt", "messages": [{"role": "user", "content": "x " + word()}]},
        )
    assert failed.status_code >= 500
    fake_upstream.behaviour.fail_status = None
    page.locator("#dash-filters button[type=submit]").click()
    wait_until(lambda: kpi(page, "requests") == before + 3)
    assert kpi(page, "errors") == 1
    assert page.locator("[data-kpi=hit_ratio] .kpi-sub").inner_text().startswith("1 of")
    assert page.locator("[data-kpi=saved] .kpi-value").inner_text() != "€0.00"
    assert page.locator("#charts figure").count() == 7
    assert page.locator("#charts figure svg").count() == 7
    models = page.locator("[data-chart=models] svg").get_attribute("aria-label")
    assert "fake-gpt" in models
    routes = page.locator("[data-chart=routes] svg").get_attribute("aria-label")
    assert "cache:exact: 1" in routes and "priority → fake-gpt" in routes
    health = page.locator("#health-table")
    assert "fake-gpt" in health.inner_text() and "closed (healthy)" in health.inner_text()
    assert page.locator("#key-table tbody th").all_inner_texts() == [admin["id"]]
    shot(page, "dashboard", full_page=True)
    # Another period: the last hour holds the same requests; filtering by key too.
    page.locator("#dash-period").select_option("1h")
    wait_until(lambda: kpi(page, "requests") == before + 3)
    page.locator("#dash-key").select_option(admin["id"])
    wait_until(lambda: page.locator("#dash-status").inner_text().startswith("Updated"))
    assert kpi(page, "requests") == before + 3


def test_language_switch_translates_the_whole_interface(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text())
    fr = json.loads((STATIC_DIR / "i18n" / "fr.json").read_text())
    english_only = sorted(
        (v for k, v in en.items() if v != fr[k] and "{" not in v and len(v) > 4), key=len
    )
    page = new_page()
    sign_in(page, web_server)
    fake_upstream.behaviour.answer = "Réponse du modèle."
    answer = page.locator(".msg-assistant")
    page.locator("#prompt").fill("Bonjour " + word())
    page.keyboard.press("Enter")
    answer.locator("xpath=self::*[@data-status='done']").wait_for()
    page.locator("#lang-select").select_option("fr")
    assert page.evaluate("document.documentElement.lang") == "fr"
    assert page.locator("#nav a[data-view=chat]").inner_text() == "Discussion"
    assert page.locator("#signout").inner_text() == "Se déconnecter"
    assert page.locator("#prompt").get_attribute("placeholder") == "Posez une question…"
    assert page.locator("#who-role").inner_text() == "administrateur"

    def leftovers() -> list[str]:
        text = page.evaluate("document.body.innerText")
        attrs = " ".join(
            page.evaluate(
                "[...document.querySelectorAll('[aria-label],[placeholder],[title]')]"
                ".filter((e) => e.offsetParent !== null)"
                ".map((e) => [e.getAttribute('aria-label'), e.getAttribute('placeholder'),"
                " e.getAttribute('title')].join(' '))"
            )
        )
        shown = text + " " + attrs
        return [s for s in english_only if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", shown)]

    assert leftovers() == []
    shot(page, "chat-fr")
    page.locator("#nav a[data-view=dashboard]").click()
    page.locator("[data-kpi=requests]").wait_for()
    assert page.locator("#dash-title").inner_text() == "Exploitation"
    assert leftovers() == []
    shot(page, "dashboard-fr")
    page.reload()  # the choice is remembered
    page.locator("#identity").wait_for(state="visible")
    assert page.locator("#nav a[data-view=chat]").inner_text() == "Discussion"
    page.locator("#lang-select").select_option("en")
    assert page.locator("#nav a[data-view=chat]").inner_text() == "Chat"


def test_phone_375_px_wide(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.answer = "A long answer that has to wrap on a narrow phone screen, " * 3
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)

    def fits() -> bool:
        return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))

    page.goto(web_server.url + "/")
    page.locator("#signin-key").wait_for()
    assert fits()
    sign_in(page, web_server)
    assert fits()
    assert not page.locator("#conv-panel").is_visible()  # a drawer on phones
    page.locator("#prompt").fill("Long question " + word())
    page.locator("#send").tap()
    page.locator(".msg-assistant[data-status=done]").wait_for()
    assert fits()
    box = page.locator(".msg-assistant").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    send = page.locator("#send").bounding_box()
    assert send is not None and send["height"] >= 36 and send["x"] + send["width"] <= 375
    shot(page, "phone-chat")
    page.locator("#conv-toggle").tap()
    page.locator("#conv-panel").wait_for(state="visible")
    wait_until(lambda: (page.locator("#conv-panel").bounding_box() or {"x": -1})["x"] >= 0)
    assert page.locator("#conv-toggle").get_attribute("aria-expanded") == "true"
    shot(page, "phone-conversations")
    page.keyboard.press("Escape")
    wait_until(lambda: not page.locator("#conv-panel").is_visible())
    page.locator("#nav a[data-view=dashboard]").tap()
    page.locator("[data-kpi=requests]").wait_for()
    assert fits()
    shot(page, "phone-dashboard", full_page=True)


def test_installable_web_app(web_server: RunningServer, new_page: Callable[..., Any]) -> None:
    page = new_page(service_workers="allow")
    page.goto(web_server.url + "/")
    href = page.locator("link[rel=manifest]").get_attribute("href")
    manifest = page.evaluate("(href) => fetch(href).then((r) => r.json())", href)
    assert manifest["display"] == "standalone" and manifest["start_url"] == "/"
    for icon in manifest["icons"]:
        ok = page.evaluate("(src) => fetch(src).then((r) => r.ok)", icon["src"])
        assert ok, icon["src"]
    scope = page.evaluate(
        "navigator.serviceWorker.ready.then((registration) => registration.scope)"
    )
    assert scope == web_server.url + "/"


@pytest.mark.parametrize("view", ["signin", "chat", "dashboard"])
def test_no_serious_accessibility_violations(
    web_server: RunningServer,
    new_page: Callable[..., Any],
    axe_source: str,
    view: str,
    fake_upstream: FakeUpstream,
) -> None:
    """axe-core (WCAG 2.1 A and AA rules, colour contrast included) finds nothing serious."""
    page = new_page(bypass_csp=True)  # axe is injected as an inline script
    if view == "signin":
        page.goto(web_server.url + "/")
        page.locator("#signin-key").wait_for()
    else:
        sign_in(page, web_server)
        fake_upstream.behaviour.answer = "Use **ibuprofen** with care:\n\n- with food\n- `400 mg`"
        if view == "chat":
            page.locator("#prompt").fill("Accessible? " + word())
            page.keyboard.press("Enter")
            page.locator(".msg-assistant[data-status=done]").wait_for()
            page.locator(".msg-assistant .route summary").click()
        else:
            chat(web_server, ADMIN_KEY, "for the charts " + word())
            page.locator("#nav a[data-view=dashboard]").click()
            page.locator("#charts svg").first.wait_for()
    page.add_script_tag(content=axe_source)
    result = page.evaluate(
        """() => axe.run(document, {
             runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
             resultTypes: ['violations'],
           })"""
    )
    (ARTIFACTS / f"axe-{view}.json").write_text(json.dumps(result["violations"], indent=1))
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], serious
