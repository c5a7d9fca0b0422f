"""The key console, driven in a real headless Chromium through Selenium and
Debian's chromedriver: the page served by `keygate serve` on its admin listener, the real
service behind it, and the demo Envoy whose keygate filter looks keys up in that service.

Sign in, create a CORS key, read its secret from the page and call the API through Envoy
with it, disable it (401 within 2 s), rotate and delete it, and find every step in the audit
view; a wrong token, a validation error beside its field, the response headers, and the
admin API refusing cross-site requests. The screenshots the README shows are taken here
(docs/console.png, docs/console-create.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

# Pinned in tests/requirements.txt; scripts/setup.sh installs it into .venv.
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from support.demo import demo_envoy
from support.harness import ROOT, UNAUTHORIZED, bearer
from support.service import Service, request

DOCS = ROOT / "docs"
ADMIN = "kg_console_admin_7c41d09e2b"
ORIGIN = "https://app.example"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def shot(browser, name: str) -> None:
    """Takes a screenshot into a temporary folder, or into docs/ (the README's pictures) with
    KEYGATE_SCREENSHOTS=docs, and checks it is a real picture of the page."""
    folder = DOCS if os.environ.get("KEYGATE_SCREENSHOTS") == "docs" else Path(tempfile.mkdtemp(prefix="keygate-shot-"))
    folder.mkdir(exist_ok=True)
    path = folder / name
    browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def chromium() -> str | None:
    return os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")


def chromedriver() -> str | None:
    return os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = Service("sqlite:keygate.db", tmp_path_factory.mktemp("console-service"), tokens=[ADMIN]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def demo(service):
    """The demo Envoy, two workers, its keygate filter's key service the real one."""
    e = demo_envoy(service.filter_port, service.ratelimit_port)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def browser():
    binary, driver_binary = chromium(), chromedriver()
    if binary is None or driver_binary is None:
        pytest.fail("chromium and chromedriver are not installed: scripts/setup.sh --browser installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="keygate-console-chromium-")
    # As test_browser.py: no network on this machine, so nothing in the background.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,800", "--force-device-scale-factor=1",
                 "--hide-scrollbars", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(driver_binary), options=options)
    set_viewport(driver, 1280, 800)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver, width, height):
    """The page's own area (what a screenshot shows) at width x height."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [innerWidth, innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def wait(driver, condition, timeout=10, message=""):
    # The list is drawn anew after every change: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)


def by_id(driver, element_id):
    return driver.find_element(By.ID, element_id)


def visible(driver, element_id) -> bool:
    found = driver.find_elements(By.ID, element_id)
    return bool(found) and found[0].is_displayed()


def text_of(driver, element_id) -> str:
    return by_id(driver, element_id).text


def fill(driver, element_id, value):
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(value)


def row(driver, key_id):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#key-rows tr[data-id="{key_id}"]')
    return rows[0] if rows else None


def row_action(driver, key_id, action):
    wait(driver, lambda d: row(d, key_id) is not None, message=f"no row for {key_id}")
    row(driver, key_id).find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()


def status_of(driver, key_id) -> str | None:
    return driver.execute_script(
        "const r = document.querySelector(`#key-rows tr[data-id=\"${arguments[0]}\"]`);"
        "return r && r.dataset.status;", key_id)


def open_console(driver, service):
    """A fresh tab state: the page, signed out."""
    driver.get(f"http://127.0.0.1:{service.admin_port}/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"http://127.0.0.1:{service.admin_port}/")
    wait(driver, lambda d: visible(d, "signin-view"))


def sign_in(driver, service, token=ADMIN):
    open_console(driver, service)
    fill(driver, "token", token)
    by_id(driver, "token").send_keys(Keys.ENTER)  # the keyboard, not a click
    wait(driver, lambda d: visible(d, "keys-view"), message="not signed in")


def read_secret(driver) -> str:
    wait(driver, lambda d: visible(d, "secret-dialog"), message="no secret shown")
    secret = by_id(driver, "secret-value").get_attribute("value")
    assert secret.startswith("kg_"), secret
    assert "only time" in text_of(driver, "secret-dialog")
    return secret


def close_secret(driver):
    by_id(driver, "secret-done").click()
    wait(driver, lambda d: not visible(d, "secret-dialog"))
    assert by_id(driver, "secret-value").get_attribute("value") == "", "the secret outlived its dialog"


def through_envoy(demo, key, expect, within, origin=ORIGIN) -> float:
    """Seconds until fresh connections (spread over both workers) all answer `expect`."""
    start = time.monotonic()
    while True:
        statuses = [demo.get("/api/stream/1", [bearer(key), ("origin", origin)]).status for _ in range(6)]
        if all(s == expect for s in statuses):
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"still {statuses} after {within} s"
        time.sleep(0.05)


# ---- The listener: headers and cross-site refusals, over plain HTTP ---------------------------


@pytest.mark.parametrize("path,content_type", [
    ("/", "text/html; charset=utf-8"),
    ("/console.js", "text/javascript; charset=utf-8"),
    ("/console.css", "text/css; charset=utf-8"),
    ("/favicon.svg", "image/svg+xml"),
])
def test_the_page_and_its_assets_carry_the_security_headers(service, path, content_type):
    r = request(service.admin_port, "GET", path)
    assert r.status == 200
    assert r.headers["content-type"] == content_type
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name
    assert not [h for h in r.headers if h.startswith("access-control-")]


def test_the_page_has_no_inline_script_or_style_and_no_outside_resource(service):
    html = request(service.admin_port, "GET", "/").body.decode()
    assert "<script>" not in html and " style=" not in html and "<style" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "everything comes from the service itself"
    assert '<script src="/console.js" defer></script>' in html
    js = request(service.admin_port, "GET", "/console.js").body.decode()
    assert "localStorage" not in js.replace("never localStorage", "")


def test_api_answers_carry_the_headers_too(service):
    r = service.admin("GET", "/v1/keys")
    assert r.status == 200
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name
    assert service.admin("GET", "/v1/keys", token="").headers["x-frame-options"] == "DENY"


def test_a_cross_site_post_is_refused_and_creates_nothing(service):
    before = service.admin("GET", "/v1/audit").json()["entries"]
    entry = {"id": "from-evil", "owner": "evil"}
    refused = {"error": "Forbidden", "message": "cross-origin requests to the admin API are refused"}
    r = service.admin("POST", "/v1/keys", entry, headers={"origin": "https://evil.example"})
    assert (r.status, r.json()) == (403, refused)
    assert r.headers["content-type"] == "application/json"
    assert not [h for h in r.headers if h.startswith("access-control-")]
    # Another port of the same host is another origin.
    other = f"http://127.0.0.1:{service.filter_port}"
    assert service.admin("POST", "/v1/keys", entry, headers={"origin": other}).status == 403
    assert service.admin("POST", "/v1/keys", entry, headers={"origin": "null"}).status == 403
    # A browser that names the request cross-site or same-site, with or without Origin.
    for site in ("cross-site", "same-site"):
        r = service.admin("POST", "/v1/keys", entry, headers={"sec-fetch-site": site})
        assert r.status == 403 and r.json()["error"] == "Forbidden"
    # Every method and path of the API, the preflight included: no CORS allowance ever.
    for method, path in (("GET", "/v1/keys"), ("GET", "/v1/export"), ("DELETE", "/v1/keys/x"),
                         ("PATCH", "/v1/keys/x"), ("GET", "/v1/audit")):
        r = service.admin(method, path, headers={"origin": "https://evil.example"})
        assert r.status == 403, (method, path)
    r = request(service.admin_port, "OPTIONS", "/v1/keys", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert r.status == 403
    assert not [h for h in r.headers if h.startswith("access-control-")]
    assert service.admin("GET", "/v1/keys/from-evil").status == 404
    assert service.admin("GET", "/v1/audit").json()["entries"] == before
    # The listener's own origin, as the console sends it, and clients that send none.
    own = f"http://127.0.0.1:{service.admin_port}"
    r = service.admin("GET", "/v1/keys", headers={"origin": own, "sec-fetch-site": "same-origin"})
    assert r.status == 200
    assert service.admin("GET", "/v1/keys").status == 200


# ---- The page in Chromium ---------------------------------------------------------------------


def test_a_wrong_token_is_refused_on_the_page(browser, service):
    open_console(browser, service)
    fill(browser, "token", "kg_not_an_admin_token")
    by_id(browser, "signin-button").click()
    wait(browser, lambda d: "Wrong admin token" in text_of(d, "signin-error"), message="no error shown")
    assert "401" in text_of(browser, "signin-error")
    assert visible(browser, "signin-view") and not visible(browser, "keys-view")
    assert browser.execute_script("return sessionStorage.length") == 0
    # The browser log (read by the policy test below) sees what the page met: the 401.
    assert any("401" in e["message"] for e in browser.get_log("browser"))
    # An empty token is refused without a call.
    fill(browser, "token", "")
    by_id(browser, "signin-button").click()
    wait(browser, lambda d: text_of(d, "signin-error") == "Enter an admin token.")


def seed(service):
    """Keys of every kind and status, so the list (and its screenshot) shows them all."""
    for entry in (
        {"id": "backend-billing", "name": "Billing backend", "owner": "team-billing"},
        {"id": "partner-acme", "name": "Acme partner", "owner": "acme",
         "rules": [{"methods": ["GET"], "paths": ["/api/asset/{id}"]}]},
        {"id": "web-player", "name": "Web player", "owner": "user-42",
         "cors": {"allowed_origins": ["https://app.example", "http://localhost:8080"], "full_access": False},
         "resources": ["stream-7f3a", "asset-19bc"]},
        {"id": "studio-full", "name": "Studio (full access)", "owner": "user-42",
         "cors": {"allowed_origins": ["https://studio.example"], "full_access": True}},
        {"id": "launch-2030", "name": "Launch campaign", "owner": "marketing",
         "not_before": "2030-01-01T00:00:00Z", "expires_at": "2030-03-01T00:00:00Z"},
        {"id": "old-ci", "name": "Old CI runner", "owner": "team-ci", "expires_at": "2025-06-30T00:00:00Z"},
        {"id": "suspended", "name": "Suspended client", "owner": "acme", "disabled": True},
    ):
        if service.admin("GET", f"/v1/keys/{entry['id']}").status == 404:
            service.create(entry)


def test_the_key_list_shows_kind_status_and_validity(browser, service):
    seed(service)
    sign_in(browser, service)
    wait(browser, lambda d: row(d, "suspended") is not None)
    assert status_of(browser, "backend-billing") == "active"
    assert status_of(browser, "launch-2030") == "scheduled"
    assert status_of(browser, "old-ci") == "expired"
    assert status_of(browser, "suspended") == "disabled"
    cells = [c.text for c in row(browser, "web-player").find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == ["web-player", "Web player", "user-42", "CORS"]
    assert "https://app.example" in cells[4] and "http://localhost:8080" in cells[4]
    assert "stream-7f3a" in cells[5]
    assert row(browser, "studio-full").find_elements(By.TAG_NAME, "td")[3].text == "full access"
    assert row(browser, "backend-billing").find_elements(By.TAG_NAME, "td")[3].text == "backend"
    assert "from 2030-01-01 00:00:00" in row(browser, "launch-2030").text
    # Filter by owner.
    fill(browser, "owner-filter", "acme")
    by_id(browser, "owner-filter").send_keys(Keys.ENTER)
    wait(browser, lambda d: row(d, "web-player") is None and row(d, "partner-acme") is not None)
    assert {r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")} == {
        "partner-acme", "suspended"}
    fill(browser, "owner-filter", "")
    by_id(browser, "filter-form").submit()
    wait(browser, lambda d: row(d, "web-player") is not None)


def test_paging_follows_the_next_cursor(browser, service):
    for i in range(30):
        if service.admin("GET", f"/v1/keys/page-{i:02}").status == 404:
            service.create({"id": f"page-{i:02}", "owner": "pager"})
    sign_in(browser, service)
    fill(browser, "owner-filter", "pager")
    Select(by_id(browser, "page-size")).select_by_visible_text("25")
    by_id(browser, "filter-form").submit()
    wait(browser, lambda d: row(d, "page-00") is not None)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")) == 25
    assert row(browser, "page-25") is None
    by_id(browser, "next-page").click()
    wait(browser, lambda d: row(d, "page-29") is not None)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")) == 5
    assert not by_id(browser, "next-page").is_enabled()
    by_id(browser, "prev-page").click()
    wait(browser, lambda d: row(d, "page-00") is not None)
    for i in range(30):
        assert service.admin("DELETE", f"/v1/keys/page-{i:02}").status == 204


def test_a_validation_error_shows_next_to_its_field(browser, service):
    sign_in(browser, service)
    by_id(browser, "new-key").click()
    wait(browser, lambda d: visible(d, "key-dialog"))
    fill(browser, "f-id", "bad-origin")
    by_id(browser, "f-cors").click()
    origins = browser.find_elements(By.CSS_SELECTOR, "#origin-list input")
    origins[0].send_keys("https://ok.example")
    by_id(browser, "add-origin").click()
    second = browser.find_elements(By.CSS_SELECTOR, "#origin-list input")[1]
    second.send_keys("ftp://files.example")
    by_id(browser, "key-submit").click()
    # Checked in the page as the filter checks it: the error sits under the second origin.
    error = second.find_element(By.XPATH, "following-sibling::p[@class='error']")
    wait(browser, lambda d: error.text != "", message="no error under the origin")
    assert error.text == "expected an origin scheme://host[:port] with scheme http or https, and no path"
    assert second.get_attribute("aria-invalid") == "true"
    assert origins[0].get_attribute("aria-invalid") is None
    second.clear()
    second.send_keys("https://also-ok.example")
    # Only the server knows this one: its JSON path puts it next to the resources field.
    fill(browser, "f-resources", "stream-1\nno/slashes")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: text_of(d, "err-resources") != "", message="the server's error is not shown")
    assert text_of(browser, "err-resources") == "not a path segment a request could carry"
    assert by_id(browser, "f-resources").get_attribute("aria-invalid") == "true"
    assert text_of(browser, "form-error") == ""
    fill(browser, "f-resources", "")
    fill(browser, "f-expires", "next tuesday")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: text_of(d, "err-expires") != "")
    assert service.admin("GET", "/v1/keys/bad-origin").status == 404
    # A taken id is reported on the id field.
    fill(browser, "f-expires", "")
    fill(browser, "f-id", "backend-billing")
    by_id(browser, "f-cors").click()
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: "already exists" in text_of(d, "err-id"))
    by_id(browser, "f-id").send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not visible(d, "key-dialog"))


def test_create_disable_rotate_delete_through_envoy_and_the_audit_view(browser, service, demo):
    seed(service)
    sign_in(browser, service)

    # Create: a CORS key for one origin, with the keyboard where it matters.
    by_id(browser, "new-key").click()
    wait(browser, lambda d: visible(d, "key-dialog"))
    assert browser.switch_to.active_element == by_id(browser, "f-id")
    fill(browser, "f-id", "console-web")
    fill(browser, "f-name", "Console web app")
    fill(browser, "f-owner", "user-7")
    by_id(browser, "f-cors").send_keys(Keys.SPACE)
    wait(browser, lambda d: visible(d, "cors-fields"))
    browser.find_element(By.CSS_SELECTOR, "#origin-list input").send_keys(ORIGIN)
    fill(browser, "f-not-before", "2026-01-01T00:00:00Z")
    # Scrolled to the top, and no blinking caret: the same picture on every run.
    browser.execute_script("document.querySelector('#key-dialog').scrollTop = 0;"
                           "document.activeElement.blur()")
    shot(browser, "console-create.png")
    by_id(browser, "key-submit").click()
    secret = read_secret(browser)
    assert "console-web" in text_of(browser, "secret-for")
    # Shown once: nowhere in storage, the URL, or the list.
    assert secret not in browser.current_url
    assert browser.execute_script("return localStorage.length") == 0
    assert secret not in browser.execute_script("return JSON.stringify(sessionStorage)")
    close_secret(browser)
    assert secret not in browser.page_source
    created = service.admin("GET", "/v1/keys/console-web").json()["entry"]
    assert created == {"id": "console-web", "name": "Console web app", "owner": "user-7",
                       "cors": {"allowed_origins": [ORIGIN], "full_access": False},
                       "not_before": "2026-01-01T00:00:00Z", "last_used_at": None}
    wait(browser, lambda d: status_of(d, "console-web") == "active")
    # The key list as the README shows it (before the rotation writes today's time into it).
    browser.execute_script("document.getElementById('keys-status').textContent = '';"
                           "document.querySelector('.table-wrap').scrollLeft = 0;"
                           "document.activeElement.blur()")
    shot(browser, "console.png")

    # The secret read from the page works through Envoy, from its origin.
    r = demo.get("/api/stream/1", [bearer(secret), ("origin", ORIGIN)])
    assert r.status == 200, r.body
    assert r.upstream_all("x-api-key-id") == ["console-web"]
    assert r.header("access-control-allow-origin") == ORIGIN
    through_envoy(demo, secret, 200, within=2)
    assert demo.get("/api/stream/1", [bearer(secret), ("origin", "https://evil.example")]).status == 403

    # Disable in the page: refused through Envoy within 2 s. Enable again: works.
    row_action(browser, "console-web", "disable")
    wait(browser, lambda d: status_of(d, "console-web") == "disabled")
    assert through_envoy(demo, secret, 401, within=2) < 2
    assert demo.get("/api/stream/1", [bearer(secret), ("origin", ORIGIN)]).body == UNAUTHORIZED
    row_action(browser, "console-web", "enable")
    wait(browser, lambda d: status_of(d, "console-web") == "active")
    through_envoy(demo, secret, 200, within=2)

    # Rotate with a grace period: a successor with a new secret; both work.
    row_action(browser, "console-web", "rotate")
    wait(browser, lambda d: visible(d, "rotate-dialog"))
    fill(browser, "f-grace", "600")
    by_id(browser, "f-grace").send_keys(Keys.ENTER)
    new_secret = read_secret(browser)
    assert new_secret != secret
    about = text_of(browser, "secret-for")
    successor = about.split()[1].rstrip(",")
    assert successor.startswith("key_") and "successor of console-web" in about
    close_secret(browser)
    wait(browser, lambda d: row(d, successor) is not None)
    through_envoy(demo, new_secret, 200, within=2)
    through_envoy(demo, secret, 200, within=2)
    old = service.admin("GET", "/v1/keys/console-web").json()["entry"]
    assert "expires_at" in old

    # Delete the successor, after a confirmation; cancelling first keeps it.
    row_action(browser, successor, "delete")
    wait(browser, lambda d: visible(d, "delete-dialog"))
    assert successor in text_of(browser, "delete-dialog")
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # focus starts on Cancel
    wait(browser, lambda d: not visible(d, "delete-dialog"))
    assert service.admin("GET", f"/v1/keys/{successor}").status == 200
    row_action(browser, successor, "delete")
    wait(browser, lambda d: visible(d, "delete-dialog"))
    by_id(browser, "delete-confirm").click()
    wait(browser, lambda d: row(d, successor) is None, message="the deleted key is still listed")
    assert f"Deleted key {successor}" in text_of(browser, "keys-status")
    assert service.admin("GET", f"/v1/keys/{successor}").status == 404
    assert through_envoy(demo, new_secret, 401, within=2) < 2

    # Every step in the audit view, newest first.
    by_id(browser, "tab-audit").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#audit-rows tr[data-seq]")) > 0)
    rows = browser.find_elements(By.CSS_SELECTOR, "#audit-rows tr[data-seq]")
    seqs = [int(r.get_attribute("data-seq")) for r in rows]
    assert seqs == sorted(seqs, reverse=True)
    ours = [(r.get_attribute("data-action"), r.get_attribute("data-key")) for r in rows
            if r.get_attribute("data-key") in ("console-web", successor)]
    assert ours == [("delete", successor), ("rotate", "console-web"), ("update", "console-web"),
                    ("update", "console-web"), ("create", "console-web")]
    rotate_row = next(r for r in rows if r.get_attribute("data-action") == "rotate")
    assert successor in rotate_row.text
    admin_digest = service.admin("GET", "/v1/audit").json()["entries"][0]["admin"]
    assert admin_digest in rotate_row.text



def test_the_page_runs_under_its_policy_without_a_violation_or_an_error(browser, service):
    seed(service)
    browser.get_log("browser")  # drop what earlier tests left
    sign_in(browser, service)
    wait(browser, lambda d: row(d, "web-player") is not None)
    for opener, dialog in (("new-key", "key-dialog"),):
        by_id(browser, opener).click()
        wait(browser, lambda d, dialog=dialog: visible(d, dialog))
        by_id(browser, "f-cors").click()
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(browser, lambda d, dialog=dialog: not visible(d, dialog))
    row_action(browser, "web-player", "rotate")
    wait(browser, lambda d: visible(d, "rotate-dialog"))
    by_id(browser, "f-grace").send_keys(Keys.ESCAPE)
    by_id(browser, "tab-audit").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#audit-rows tr[data-seq]")) > 0)
    by_id(browser, "tab-keys").click()
    wait(browser, lambda d: row(d, "web-player") is not None)
    logged = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert logged == [], logged


def test_the_token_stays_in_the_tab_and_signing_out_forgets_it(browser, service):
    sign_in(browser, service)
    assert browser.execute_script("return localStorage.length") == 0
    assert ADMIN not in browser.current_url
    # A reload keeps the session (sessionStorage, this tab only) ...
    browser.refresh()
    wait(browser, lambda d: visible(d, "keys-view"))
    # ... signing out forgets it.
    by_id(browser, "sign-out").click()
    wait(browser, lambda d: visible(d, "signin-view"))
    assert browser.execute_script("return sessionStorage.length") == 0


def test_a_narrow_window_stacks_the_rows(browser, service):
    seed(service)
    sign_in(browser, service)
    try:
        set_viewport(browser, 420, 800)
        wait(browser, lambda d: row(d, "web-player") is not None)
        wait(browser, lambda d: d.execute_script(
            "return getComputedStyle(document.querySelector('#key-table thead')).position") == "absolute")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{overflow} px wider than the window"
        assert row(browser, "web-player").find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').is_displayed()
    finally:
        set_viewport(browser, 1280, 800)


def test_edit_changes_origins_and_removes_a_name(browser, service):
    seed(service)
    sign_in(browser, service)
    row_action(browser, "studio-full", "edit")
    wait(browser, lambda d: visible(d, "key-dialog"))
    assert by_id(browser, "f-id").get_attribute("readonly") is not None
    assert by_id(browser, "f-full").is_selected()
    by_id(browser, "add-origin").click()
    browser.switch_to.active_element.send_keys("https://beta.studio.example")
    fill(browser, "f-name", "")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: not visible(d, "key-dialog"))
    entry = service.admin("GET", "/v1/keys/studio-full").json()["entry"]
    assert "name" not in entry
    assert entry["cors"] == {"allowed_origins": ["https://studio.example", "https://beta.studio.example"],
                             "full_access": True}


def test_limits_of_a_key_and_its_owner_are_shown_and_edited_in_the_dialog(browser, service):
    service.admin("DELETE", "/v1/owners/console-co")
    r = service.admin("POST", "/v1/keys", {"id": "limited-in-console", "owner": "console-co",
                                           "limits": [{"requests": 100, "per": "minute"}]})
    assert r.status in (201, 409), r
    assert service.admin("PUT", "/v1/owners/console-co",
                         {"limits": [{"name": "monthly-ish", "requests": 100000, "per": "day"}]}).status in (200, 201)
    sign_in(browser, service)
    wait(browser, lambda d: row(d, "limited-in-console") is not None)
    assert "100/minute" in row(browser, "limited-in-console").text
    row_action(browser, "limited-in-console", "edit")
    wait(browser, lambda d: visible(d, "key-dialog"))
    assert by_id(browser, "f-limits").get_attribute("value") == "100/minute"
    wait(browser, lambda d: by_id(d, "f-owner-limits").get_attribute("value") == "monthly-ish=100000/day",
         message="the owner's limits were not loaded")
    # A line the page cannot read is shown beside its field and nothing is sent.
    fill(browser, "f-limits", "100/fortnight")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: "expected REQUESTS/PER" in text_of(d, "err-limits"))
    assert visible(browser, "key-dialog")
    fill(browser, "f-limits", "burst=5/second\n1000/hour")
    fill(browser, "f-owner-limits", "50000/day")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: not visible(d, "key-dialog"), message="the dialog did not close")
    entry = service.admin("GET", "/v1/keys/limited-in-console").json()["entry"]
    assert entry["limits"] == [{"requests": 5, "per": "second", "name": "burst"}, {"requests": 1000, "per": "hour"}]
    assert service.admin("GET", "/v1/owners/console-co").json()["limits"] == [{"requests": 50000, "per": "day"}]
    # Emptied: the key's limits and the owner's go.
    row_action(browser, "limited-in-console", "edit")
    wait(browser, lambda d: by_id(d, "f-owner-limits").get_attribute("value") == "50000/day")
    fill(browser, "f-limits", "")
    fill(browser, "f-owner-limits", "")
    by_id(browser, "key-submit").click()
    wait(browser, lambda d: not visible(d, "key-dialog"))
    assert "limits" not in service.admin("GET", "/v1/keys/limited-in-console").json()["entry"]
    assert service.admin("GET", "/v1/owners/console-co").status == 404


def test_a_leaked_key_is_marked_in_the_list_and_its_record_shown_in_its_dialog(browser, service):
    r = service.admin("POST", "/v1/keys", {"id": "leaked-in-console"})
    assert r.status == 201, r
    source = "https://paste.example/abc <b>not markup</b>"
    assert service.admin("POST", "/v1/leaks", {"key": r.json()["key"], "source": source}).status == 200
    assert service.admin("POST", "/v1/keys", {"id": "not-leaked-in-console"}).status == 201
    sign_in(browser, service)
    wait(browser, lambda d: row(d, "leaked-in-console") is not None)
    def marks(key_id):
        return [p.text for p in row(browser, key_id).find_elements(By.CSS_SELECTOR, ".pill.leaked")]

    assert marks("leaked-in-console") == ["leaked"]
    assert marks("not-leaked-in-console") == []
    assert status_of(browser, "leaked-in-console") == "disabled"
    row_action(browser, "not-leaked-in-console", "edit")
    wait(browser, lambda d: visible(d, "key-dialog"))
    time.sleep(0.5)
    assert not visible(browser, "leak-record")
    by_id(browser, "key-dialog").send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not visible(d, "key-dialog"))
    row_action(browser, "leaked-in-console", "edit")
    wait(browser, lambda d: visible(d, "leak-record"), message="the leak record was not shown")
    [item] = by_id(browser, "leak-list").find_elements(By.TAG_NAME, "li")
    admin = service.admin("GET", "/v1/keys/leaked-in-console").json()["leaks"][0]["reporter"]
    assert item.text.endswith(f"UTC by {admin} (disabled): {source}"), item.text
    assert item.find_elements(By.TAG_NAME, "b") == [], "the source was read as markup"
    by_id(browser, "key-dialog").send_keys(Keys.ESCAPE)


def test_a_keys_usage_is_charted_in_its_dialog_and_unused_keys_can_be_listed(browser, service):
    for key_id in ("charted", "idle-in-console"):
        assert service.admin("POST", "/v1/keys", {"id": key_id, "owner": "chart-co"}).status == 201
    minute = int(time.time() // 60 * 60_000)
    batch = {"batch": f"console-{minute}", "minute": minute,
             "keys": [{"id": "charted", "owner": "chart-co",
                       "counts": {"allowed": 7, "denied_endpoint": 2, "unavailable": 1, "upstream_2xx": 7}}]}
    r = request(service.filter_port, "POST", "/v1/filter/usage", json.dumps(batch).encode(),
                {"content-type": "application/json"})
    assert r.status == 200, r
    hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(minute / 1000))
    used = time.strftime("%Y-%m-%d %H:%M:00", time.gmtime(minute / 1000))
    sign_in(browser, service)
    wait(browser, lambda d: row(d, "charted") is not None)
    def last_used(key_id):
        return row(browser, key_id).find_element(By.CSS_SELECTOR, "td.last-used").text

    assert (last_used("charted"), last_used("idle-in-console")) == (used, "never")
    row_action(browser, "charted", "edit")
    wait(browser, lambda d: visible(d, "usage-panel"), message="the usage chart was not shown")
    bars = by_id(browser, "usage-chart").find_elements(By.CSS_SELECTOR, "g[data-at]")
    assert len(bars) in (24, 25)
    [busy] = [g for g in bars if g.get_attribute("data-requests") != "0"]
    assert busy.get_attribute("data-at") == hour
    assert busy.get_attribute("data-requests") == "10"
    assert sorted(r.get_attribute("class") for r in busy.find_elements(By.TAG_NAME, "rect")) == \
        ["allowed", "denied", "unavailable"]
    assert "7 allowed" in text_of(browser, "usage-summary") and "2 denied" in text_of(browser, "usage-summary")
    by_id(browser, "key-dialog").send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not visible(d, "key-dialog"))
    # Keys unused for a week: the one never used is listed, the one used now is not.
    Select(by_id(browser, "unused-filter")).select_by_value("7")
    by_id(browser, "filter-form").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: row(d, "charted") is None and row(d, "idle-in-console") is not None,
         message="the unused filter did not apply")
    Select(by_id(browser, "unused-filter")).select_by_value("")
    by_id(browser, "filter-form").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: row(d, "charted") is not None)


def test_a_page_on_another_origin_cannot_drive_the_api(browser, service):
    """From a real page elsewhere: fetch cannot read, and a no-cors POST is refused (403)."""
    before = len(service.admin("GET", "/v1/audit?limit=1000").json()["entries"])
    browser.get("data:text/html,<title>elsewhere</title>")
    result = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const url = arguments[0];
        fetch(url, {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"},
                    body: JSON.stringify({id: "from-a-page"})})
          .then(() => fetch(url, {headers: {authorization: "Bearer x"}}))
          .then(r => done("read " + r.status), e => done("refused " + e));
    """, f"http://127.0.0.1:{service.admin_port}/v1/keys")
    assert result.startswith("refused TypeError"), result
    assert service.admin("GET", "/v1/keys/from-a-page").status == 404
    assert len(service.admin("GET", "/v1/audit?limit=1000").json()["entries"]) == before


def test_a_table_of_100000_keys_is_paged_never_loaded_whole(browser, tmp_path):
    """100,000 keys (written straight into the SQLite file the service migrated: creating
    them through the API takes minutes). The page shows one page at a time, at once."""
    import hashlib
    import sqlite3

    big = Service("sqlite:keygate.db", tmp_path, tokens=[ADMIN]).start()
    big.stop()
    now = "2026-12-01T00:00:00Z"
    with sqlite3.connect(tmp_path / "keygate.db") as db:
        db.executemany(
            "INSERT INTO keys (id, sha256, name, owner, entry, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((f"bulk-{i:06}", hashlib.sha256(b"%d" % i).hexdigest(), None, f"owner-{i % 100:02}",
              f'{{"id":"bulk-{i:06}","owner":"owner-{i % 100:02}"}}', now, now) for i in range(100_000)))
    big.start()
    try:
        sign_in(browser, big)
        start = time.monotonic()
        wait(browser, lambda d: row(d, "bulk-000049") is not None, timeout=5)
        first_page = time.monotonic() - start
        assert len(browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")) == 50
        start = time.monotonic()
        for last in (99, 149, 199):
            wait(browser, lambda d: by_id(d, "next-page").is_enabled(), timeout=5)
            by_id(browser, "next-page").click()
            wait(browser, lambda d, last=last: row(d, f"bulk-{last:06}") is not None, timeout=5)
        next_pages = time.monotonic() - start
        assert len(browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")) == 50
        assert "keys 151–200" in text_of(browser, "page-info")
        fill(browser, "owner-filter", "owner-42")
        start = time.monotonic()
        by_id(browser, "owner-filter").send_keys(Keys.ENTER)
        wait(browser, lambda d: row(d, "bulk-000042") is not None and row(d, "bulk-000142") is not None, timeout=5)
        filtered = time.monotonic() - start
        assert {r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#key-rows tr")} == {
            f"bulk-{i:06}" for i in range(42, 5000, 100)}
        assert max(first_page, next_pages, filtered) < 2, (first_page, next_pages, filtered)
    finally:
        big.stop()
