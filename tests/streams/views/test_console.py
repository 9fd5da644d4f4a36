"""The operator's console in a real headless Chromium (Debian's, driven by Selenium) against
views workers on a real broker: the overview moves with a workload, an account's history
pages, a transfer submitted from the form completes and moves both balances, a bad one shows
the server's reason next to its field, and a stopped views worker is reported, not waited on.
"""
from __future__ import annotations

import orjson

import os
import shutil
import threading

import pytest

from kbank.streams.apikeys import AUDITOR, CLIENT
from kbank.streams.keystore import create_key, revoke_key
from tests.http import current_key, get_json, request
from tests.workload import Workload, ledger, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("BANK_CONSOLE_SCREENSHOTS")  # a directory: save each page there too


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, f"{missing} missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    # the console runs under the server's Content-Security-Policy without breaking it
    refused = [e["message"] for e in driver.get_log("browser")
               if "Content Security Policy" in e["message"]]
    driver.quit()
    assert not refused, refused


def text(driver, element_id: str) -> str:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def sign_in(driver, url: str, key: str) -> None:  # noqa: ANN001
    """Open the console and sign in with an API key through its form."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/")
    wait_until(lambda: driver.find_element(By.ID, "signin").is_displayed(), 30, "the sign-in form")
    driver.find_element(By.ID, "signin-key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()


def shoot(driver, tmp_path, name: str) -> None:  # noqa: ANN001
    driver.save_screenshot(str(tmp_path / f"console-{name}.png"))
    if SCREENSHOTS:
        driver.save_screenshot(os.path.join(SCREENSHOTS, f"console-{name}.png"))


def test_the_console_shows_the_system_live_and_moves_money(settings, pool_factory, views_factory,
                                                           browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pool_factory(settings, 1)
    views = views_factory(settings, 2)
    url, other = views.url("0"), views.url("1")
    names = [f"acct-{i}" for i in range(20)]
    wl = Workload(settings)
    try:
        wl.open_accounts(names, 100_000)
        assert wl.wait(120)
        sender = threading.Thread(target=wl.random_transfers, args=(names, 3_000, "t", 500),
                                  kwargs={"rate_per_s": 150})
        sender.start()

        # the overview: its figures move while the workload runs; money is conserved
        sign_in(browser, url, current_key())
        # .text is "" while the page is still hidden behind the sign-in form: wait for it
        wait_until(lambda: browser.find_element(By.ID, "main").is_displayed(), 10, "signing in")
        wait_until(lambda: text(browser, "rate-completed") not in ("", "–", "0.0"), 60,
                   "the overview to show transfers completing")
        first = text(browser, "totals")
        wait_until(lambda: text(browser, "totals") != first, 30, "the overview to update itself")
        assert text(browser, "conservation") == "Yes"
        assert (text(browser, "last-close"), text(browser, "breaks")) == ("None yet", "0")
        wait_until(lambda: "ms" in text(browser, "lat-completion"), 30, "latencies to show")
        shoot(browser, tmp_path, "overview")
        sender.join()
        assert wl.wait(120)

        # an account: balance, and its history paged newest first, positions shown
        fold = ledger(settings)
        name = max(names, key=lambda n: fold.accounts[n].seq)
        view = get_json(f"{url}/accounts/{name}?min_seq={fold.accounts[name].seq}")
        assert view["seq"] > 20, "too little history to page through"
        browser.get(f"{url}/#/account/{name}")
        wait_until(lambda: text(browser, "history-page").startswith(f"seq {view['seq']} to"), 30,
                   "the account's first history page")
        balance = f"{view['balance'] // 100:,}.{view['balance'] % 100:02d}"
        assert text(browser, "acct-balance") == balance
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
        assert len(rows) == 20 and "ledger.events p" in rows[0].text
        browser.find_element(By.ID, "history-older").click()
        wait_until(lambda: text(browser, "history-page").startswith(f"seq {view['seq'] - 20} to"), 30,
                   "the second history page")
        shoot(browser, tmp_path, "account")
        browser.set_window_size(400, 800)     # a narrow window: nothing wider than the page
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        shoot(browser, tmp_path, "account-narrow")
        browser.set_window_size(1280, 800)
        browser.find_element(By.ID, "history-newer").send_keys(Keys.ENTER)   # works by keyboard
        wait_until(lambda: text(browser, "history-page").startswith(f"seq {view['seq']} to"), 30,
                   "back to the first page")

        # a transfer from the form completes and moves both balances
        src, dst = names[0], names[1]
        settled = ledger(settings).accounts      # the views may still be folding the workload
        before = {n: settled[n].balance for n in (src, dst)}
        browser.get(f"{url}/#/new")
        browser.find_element(By.ID, "new-from").send_keys(src)
        browser.find_element(By.ID, "new-to").send_keys(dst)
        browser.find_element(By.ID, "new-amount").send_keys("12.34")
        browser.find_element(By.ID, "new-request-id").clear()
        browser.find_element(By.ID, "new-request-id").send_keys("console-test-1")
        browser.find_element(By.CSS_SELECTOR, "#new-form button").click()
        wait_until(lambda: "completed" in text(browser, "new-result"), 30, "the transfer to complete")
        after = {n: get_json(f"{url}/accounts/{n}?min_seq={settled[n].seq + 1}")["balance"]
                 for n in (src, dst)}
        assert (after[src], after[dst]) == (before[src] - 1234, before[dst] + 1234)
        for n in (src, dst):        # and the account pages show the new balances
            browser.get(f"{url}/#/account/{n}")
            wait_until(lambda n=n: text(browser, "acct-balance") == f"{after[n] // 100:,}.{after[n] % 100:02d}",
                       30, f"{n}'s page to show its new balance")
        browser.get(f"{url}/#/new")
        shoot(browser, tmp_path, "new-transfer")

        # its page: lifecycle and the ledger events on both sides
        browser.find_element(By.LINK_TEXT, "Show it").click()
        wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#transfer-events tbody tr")) == 2,
                   30, "both sides' ledger events")
        assert "Status: completed" in text(browser, "transfer-status")
        events = text(browser, "transfer-events")
        assert "debited" in events and "credited" in events and "ledger.events p" in events
        shoot(browser, tmp_path, "transfer")
        # an id holding "@" (or "/") names that id of that account, never another's request
        from urllib.parse import quote
        browser.get(f"{url}/#/transfer/{quote(src, safe='')}/{quote('x@victim/1', safe='')}")
        wait_until(lambda: browser.find_element(By.ID, "transfer-id").get_attribute("value")
                   == "x@victim/1", 30, "the link's id in the form")
        assert browser.find_element(By.ID, "transfer-account").get_attribute("value") == src

        # a bad one: the server's reason, next to the field it is about
        browser.get(f"{url}/#/new")
        for field, value in (("new-from", src), ("new-to", src), ("new-amount", "1.00")):
            browser.find_element(By.ID, field).clear()
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.CSS_SELECTOR, "#new-form button").click()
        wait_until(lambda: "same account" in text(browser, "new-from-error"), 30,
                   "the reason next to the field")
        assert "Refused" in text(browser, "new-result")

        # a views worker stops: the page says so rather than hang
        browser.get(f"{url}/")
        wait_until(lambda: text(browser, "overview-updated").startswith("Updated"), 30, "the overview")
        views.kill("0")      # the worker serving the page
        wait_until(lambda: "not answering" in text(browser, "banner"), 30,
                   "the page to report the stopped worker")
        shoot(browser, tmp_path, "worker-down")
        assert get_json(f"{other}/health")["status"] == "ok"
    finally:
        wl.close()


def test_the_console_signs_in_refuses_what_the_key_may_not_do_and_signs_out(
        settings, pool_factory, views_factory, browser):
    from selenium.webdriver.common.by import By

    pool_factory(settings, 1)
    url = views_factory(settings, 1).url("0")
    auditor = create_key(settings, AUDITOR, label="console test")
    wait_until(lambda: request("GET", f"{url}/stats", key=auditor.token).status == 200, 10,
               "the key to reach the views")
    browser.get(f"{url}/")
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert not browser.find_element(By.ID, "main").is_displayed()
    sign_in(browser, url, "bk_0123456789abcdef_" + "A" * 43)      # a key no one made
    wait_until(lambda: "unknown API key" in text(browser, "signin-error"), 10, "the refusal")
    assert browser.find_element(By.ID, "signin").is_displayed()
    shop = create_key(settings, CLIENT, accounts=("a",))             # works, but not here
    wait_until(lambda: request("GET", f"{url}/accounts/a", key=shop.token).status != 401, 10,
               "the client key to reach the views")
    sign_in(browser, url, shop.token)
    wait_until(lambda: "needs an operator or auditor key" in text(browser, "signin-error"), 10,
               "the client key's refusal")
    assert browser.execute_script("return sessionStorage.length") == 0

    sign_in(browser, url, auditor.token)
    wait_until(lambda: browser.find_element(By.ID, "main").is_displayed(), 10, "signing in")
    assert auditor.record.id in text(browser, "signed-in-as")
    assert browser.execute_script("return document.cookie") == ""     # never a cookie
    wait_until(lambda: text(browser, "conservation") == "Yes", 30, "the overview")

    # an account's currency (shown in its own decimals), rules, state and metadata
    for body in ({"type": "open_account", "account": "yen", "currency": "JPY",
                  "overdraft_limit": 5_000, "metadata": {"desk": "tokyo"}},
                 {"type": "deposit", "account": "yen", "amount": 123_456},
                 {"type": "freeze", "account": "yen"}):
        assert request("POST", f"{url}/requests?wait=completed", orjson.dumps(body)).status == 200
    get_json(f"{url}/accounts/yen?min_seq=3")      # the views folded the freeze (seq 3)
    browser.get(f"{url}/#/account/yen")
    wait_until(lambda: text(browser, "acct-state") == "frozen", 30, "the frozen account's page")
    assert (text(browser, "acct-balance"), text(browser, "acct-currency"),
            text(browser, "acct-overdraft"), text(browser, "acct-max"),
            text(browser, "acct-metadata")) == ("123,456", "JPY", "5,000", "none", "desk=tokyo")
    wait_until(lambda: "desk=tokyo" in text(browser, "history"), 30, "metadata in the history")
    browser.get(f"{url}/#/new")                       # the key survives the navigation
    browser.find_element(By.ID, "new-from").send_keys("a")
    browser.find_element(By.ID, "new-to").send_keys("b")
    browser.find_element(By.ID, "new-amount").send_keys("1.00")
    browser.find_element(By.CSS_SELECTOR, "#new-form button").click()
    wait_until(lambda: "Refused: an auditor key may not use POST /transfers" in
               text(browser, "new-result"), 10, "the refused transfer")

    browser.find_element(By.ID, "signout").click()
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0

    # a revoked key signs the console out at its next request
    sign_in(browser, url, auditor.token)
    wait_until(lambda: browser.find_element(By.ID, "main").is_displayed(), 10, "signing in again")
    revoke_key(settings, auditor.record.id)
    wait_until(lambda: "revoked" in text(browser, "signin-error"), 20, "the sign-out on 401")
    assert browser.find_element(By.ID, "signin").is_displayed()
