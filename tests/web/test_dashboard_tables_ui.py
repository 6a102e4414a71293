"""Dashboard breakdowns (#25): keys appear by their names, and the "By tenant" and "By key"
tables show every column at 1280 px (they were cut off side by side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import RunningServer
from tests.web.conftest import create_key, sign_in


def test_keys_by_name_and_tables_not_cut_off_at_1280(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    admin = create_key(web_server, tenant="dash-names", role="admin", name="Reception desk")
    with web_server.http(admin["key"]) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": "hi there"}]},
        )
        assert resp.status_code == 200, resp.text
        stats = http.get("/admin/stats").json()
    assert [(k["key_id"], k["name"]) for k in stats["keys"]] == [(admin["id"], "Reception desk")]

    page = new_page(viewport={"width": 1280, "height": 800})
    sign_in(page, web_server, admin["key"])
    page.goto(web_server.url + "/#/dashboard")
    page.locator("#key-table tbody th").first.wait_for()
    cell = page.locator("#key-table tbody th").first
    assert cell.inner_text() == "Reception desk"
    assert cell.locator("span").get_attribute("title") == admin["id"]
    options = page.locator("#dash-key option").all_inner_texts()
    assert any(o.startswith("Reception desk (") for o in options)
    for table in ("#tenant-table", "#key-table"):
        wrap = page.locator(table).locator("xpath=..")
        widths = wrap.evaluate("(el) => [el.scrollWidth, el.clientWidth]")
        assert widths[0] <= widths[1], (table, widths)
