"""The web inbox and dashboard in headless Chromium against the real stack: each of the five
interaction types answered through its page, errors shown in words, two tabs on one request,
live updates, the dashboard against ``hitlflow analytics --json``, the audit search and its CSV.
Screenshots of every page are saved under test-output/screenshots/ (look at them)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from tests.browser import LiveGateway, browser_context, shot
from tests.conftest import ROOT
from tests.helpers import cli, wait_for

TYPES_CSV = ROOT / "tests" / "workflows" / "types.csv"
BUDGET_CSV = ROOT / "tests" / "workflows" / "budget.csv"


@pytest.fixture
def web(hitl: HitlTestStack) -> Iterator[LiveGateway]:
    settings = Settings(home=hitl.data_dir, nats_url=hitl.nats_url, auth=False,
                        gateway_user="ana")
    with LiveGateway(settings) as gateway:
        yield gateway


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    with browser_context(request.node.name) as context:
        yield context


pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def start(hitl: HitlTestStack, graph: str, thread_id: str, state: dict[str, Any],
          csv_path: Any = TYPES_CSV) -> dict[str, Any]:
    outcome = hitl.start(f"{csv_path}::{graph}", state, thread_id=thread_id)
    assert outcome.ok, outcome.reply
    return outcome.pending[0]


def run_cli(hitl: HitlTestStack, *args: str) -> Any:
    """The CLI, from a thread of its own (Playwright's loop runs in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(cli, hitl.nats_url, *args).result()


def audit(hitl: HitlTestStack, thread_id: str) -> list[dict[str, Any]]:
    """``hitlflow audit --thread T --format json``."""
    result = run_cli(hitl, "audit", "--thread", thread_id, "--format", "json")
    assert result.exit_code == 0, result.stderr
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def open_request(page: Any, web: LiveGateway, thread_id: str) -> None:
    """From the inbox, the request of this thread."""
    page.goto(f"{web.url}/ui/inbox")
    page.locator(f"tr[data-thread='{thread_id}'] a").first.click()
    page.wait_for_url(re.compile(rf"/ui/requests/{thread_id}/"))


def completed(page: Any) -> None:
    page.wait_for_url(re.compile(r"/ui/threads/"))
    assert "Your answer was recorded." in page.locator("[data-notice]").inner_text()


def test_each_type_is_answered_through_its_page(hitl: HitlTestStack, web: LiveGateway,
                                                browser: Any) -> None:
    folder = "each_type"
    start(hitl, "Approve", "w-approve", {"request": "Buy 3 laptops"})
    start(hitl, "Edit", "w-edit", {"draft": "Dear team,\nthe launch is on Monday."})
    start(hitl, "Choice", "w-choice", {"app": "payments"})
    start(hitl, "Text", "w-text", {"feature": "export"})
    start(hitl, "Talk", "w-talk", {"topic": "the roadmap"})
    start(hitl, "Budget", "w-budget", {"project": "Atlas"}, BUDGET_CSV)
    page = browser.new_page()
    page.goto(f"{web.url}/")
    page.wait_for_url(re.compile(r"/ui/inbox"))
    rows = page.locator("table.list tbody tr")
    assert rows.count() == 6
    assert page.locator("[data-principal]").inner_text() == "ana"
    # the nearest deadline first (a choice's default is 30 minutes, the budget's 1 hour), and
    # each counts down
    order = [row.get_attribute("data-thread") for row in rows.all()]
    assert order[:2] == ["w-choice", "w-budget"]
    assert re.search(r"\d+m \d\ds left", rows.first.locator("time").inner_text())
    shot(page, folder, "inbox")

    # approval: reject with a reason
    open_request(page, web, "w-approve")
    assert page.locator("[data-prompt]").inner_text() == "Please approve: Buy 3 laptops"
    digest = page.locator("[data-digest]").inner_text()
    shot(page, folder, "approval")
    page.fill("#reason", "Not in this quarter's budget")
    page.click("button[value=reject]")
    completed(page)
    assert page.locator("[data-status]").text_content() == "completed"
    assert page.locator("[data-answers] tr[data-event=accepted]").inner_text().count("reject")
    shot(page, folder, "approval-done")
    requested = [e for e in audit(hitl, "w-approve") if e["event"] == "requested"]
    assert requested[0]["digest"] == digest  # the page shows the digest the audit records
    assert hitl.status("w-approve").output == "Refused: Buy 3 laptops"  # type: ignore[union-attr]
    [accepted] = hitl.events("w-approve", "ThreadResumed")
    assert accepted["responder"] == "ana"

    # edit: the original, an editable copy and the diff as one types
    open_request(page, web, "w-edit")
    assert page.locator("[data-original]").inner_text() == "Dear team,\nthe launch is on Monday."
    assert page.locator("[data-no-change]").is_visible()
    page.fill("#edited", "Dear team,\nthe launch is on Tuesday.")
    page.wait_for_selector("pre.diff .d-added")
    assert "+ the launch is on Tuesday." in page.locator("pre.diff").inner_text()
    assert "- the launch is on Monday." in page.locator("pre.diff").inner_text()
    shot(page, folder, "edit")
    page.click("button[value=edit]")
    completed(page)
    assert hitl.state("w-edit")["final"] == "Dear team,\nthe launch is on Tuesday."

    # choice: the options as a list, with a justification
    open_request(page, web, "w-choice")
    assert page.locator(".option label").all_inner_texts() == [
        "1. Production (us-east-1)", "2. Staging (us-west-2)", "3. Development (local)",
        "4. Cancel deployment"]
    page.check("#choice-2")
    page.fill("#justification", "Try it on staging first")
    shot(page, folder, "choice")
    page.click("button[value=choose]")
    completed(page)
    assert hitl.state("w-choice")["target"]["option"] == "Staging (us-west-2)"
    assert hitl.state("w-choice")["target"]["justification"] == "Try it on staging first"

    # text input: plain text
    open_request(page, web, "w-text")
    page.fill("#text", "CSV and JSON, with a date filter")
    shot(page, folder, "text")
    page.click("button[value=respond]")
    completed(page)
    assert hitl.state("w-text")["requirements"] == "CSV and JSON, with a date filter"

    # text input with a response_schema: a form made from it
    open_request(page, web, "w-budget")
    assert page.locator("label[for=field-amount]").inner_text() == "Amount *"
    page.fill("#field-response", "Two engineers for a quarter")
    page.fill("#field-amount", "120000")
    page.select_option("#field-currency", "EUR")
    page.check("#field-recurring")
    shot(page, folder, "text-schema")
    page.click("button[value=respond]")
    completed(page)
    assert hitl.state("w-budget")["budget"] == {
        "response": "Two engineers for a quarter", "amount": 120000, "currency": "EUR",
        "recurring": True}

    # conversation: reply, see the transcript on the next turn, end it
    open_request(page, web, "w-talk")
    page.fill("#message", "Ship the API first")
    page.click("button[value=respond]")
    completed(page)
    page.locator("a[href^='/ui/requests/w-talk/']").click()
    assert "Ship the API first" in page.locator("[data-transcript]").inner_text()
    shot(page, folder, "conversation")
    page.click("button[value=end]")
    completed(page)
    assert page.locator("[data-status]").text_content() == "completed"
    shot(page, folder, "conversation-done")

    page.goto(f"{web.url}/ui/inbox")
    assert page.locator("[data-count]").first.get_attribute("data-count") == "0"
    for thread in ("w-approve", "w-edit", "w-choice", "w-text", "w-talk", "w-budget"):
        assert hitl.status(thread).status == "completed", thread  # type: ignore[union-attr]


def test_an_invalid_answer_shows_why_and_the_thread_keeps_waiting(
        hitl: HitlTestStack, web: LiveGateway, browser: Any) -> None:
    start(hitl, "Budget", "w-bad", {"project": "Atlas"}, BUDGET_CSV)
    page = browser.new_page()
    open_request(page, web, "w-bad")
    page.fill("#field-response", "lots")
    page.fill("#field-amount", "a million")  # not a number: said before anything is sent
    with page.expect_response(re.compile(r"/ui/requests/w-bad/")) as sent:
        page.click("button[value=respond]")
    assert sent.value.status == 422
    alert = page.get_by_role("alert")
    assert "Amount: expected a number, got 'a million'" in alert.inner_text()
    shot(page, "invalid", "form-error")
    page.fill("#field-amount", "-5")  # a number the schema refuses: the service says so
    with page.expect_response(re.compile(r"/ui/requests/w-bad/")) as sent:
        page.click("button[value=respond]")
    assert sent.value.status == 422
    alert = page.get_by_role("alert")
    assert "The answer does not fit this request." in alert.inner_text()
    assert "at amount: -5 is less than the minimum of 0" in alert.inner_text()
    assert page.locator("#field-response").input_value() == "lots"  # what was typed is kept
    shot(page, "invalid", "service-error")
    assert hitl.status("w-bad").status == "paused"  # type: ignore[union-attr]
    assert [r["code"] for r in hitl.rejections("w-bad")] == ["invalid_response"]


def test_two_tabs_on_one_request_one_answer_wins(hitl: HitlTestStack, web: LiveGateway,
                                                 browser: Any) -> None:
    start(hitl, "Approve", "w-race", {"request": "r"})
    first, second = browser.new_page(), browser.new_page()
    open_request(first, web, "w-race")
    open_request(second, web, "w-race")
    first.click("button[value=approve]")
    completed(first)
    with second.expect_response(re.compile(r"/ui/requests/w-race/")) as sent:
        second.click("button[value=reject]")
    assert sent.value.status == 409
    assert "Someone answered this request before you; the first answer stands." in \
        second.get_by_role("alert").inner_text()
    assert "Answered approve by ana" in second.locator("[data-closed]").inner_text()
    shot(second, "race", "second-tab")
    assert len(hitl.events("w-race", "ThreadResumed")) == 1
    assert hitl.status("w-race").output == "Approved: r"  # type: ignore[union-attr]


def test_a_double_click_answers_once(hitl: HitlTestStack, web: LiveGateway,
                                     browser: Any) -> None:
    start(hitl, "Approve", "w-double", {"request": "r"})
    page = browser.new_page()
    open_request(page, web, "w-double")
    page.dblclick("button[value=approve]")
    completed(page)
    assert len(hitl.events("w-double", "ThreadResumed")) == 1
    assert [e["event"] for e in audit(hitl, "w-double")].count("accepted") == 1


def test_the_same_form_sent_twice_counts_once(hitl: HitlTestStack, web: LiveGateway,
                                              browser: Any) -> None:
    start(hitl, "Approve", "w-resend", {"request": "r"})
    page = browser.new_page()
    open_request(page, web, "w-resend")
    form = {name: page.locator(f"input[name={name}]").input_value()
            for name in ("shown", "idempotency_key")}
    url = page.url
    for expected in ("answered", "again"):
        response = page.request.post(url, form={**form, "action": "approve"},
                                     max_redirects=0)
        assert response.status == 303
        assert f"?{expected}=" in response.headers["location"]
    page.goto(web.url + response.headers["location"])
    assert "it counts once" in page.locator("[data-notice]").inner_text()
    assert len(hitl.events("w-resend", "ThreadResumed")) == 1


def test_the_inbox_shows_new_requests_without_reload(hitl: HitlTestStack, web: LiveGateway,
                                                     browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{web.url}/ui/inbox")
    assert page.locator("[data-count='0']").is_visible()
    page.wait_for_selector("text=Live updates: on")
    start(hitl, "Choice", "w-live", {"app": "billing"})
    page.wait_for_selector("tr[data-thread='w-live']")
    shot(page, "live", "arrived")
    hitl.resume("w-live", "choose", {"choice": 1})
    page.wait_for_selector("[data-count='0']")
    # filters: by type
    start(hitl, "Approve", "w-live-2", {"request": "r"})
    start(hitl, "Text", "w-live-3", {"feature": "f"})
    page.goto(f"{web.url}/ui/inbox?type=text_input")
    assert [r.get_attribute("data-thread") for r in page.locator("tbody tr").all()] == [
        "w-live-3"]


def test_the_dashboard_shows_what_analytics_says(hitl: HitlTestStack, web: LiveGateway,
                                                 browser: Any) -> None:
    for n in range(3):
        start(hitl, "Approve", f"w-dash-{n}", {"request": f"r{n}"})
    hitl.resume("w-dash-0", "approve")
    hitl.resume("w-dash-1", "reject", {"reason": "no"})
    start(hitl, "Choice", "w-dash-c", {"app": "a"})
    hitl.resume("w-dash-c", "choose", {"choice": 3})
    page = browser.new_page()
    page.goto(f"{web.url}/ui/dashboard")
    result = run_cli(hitl, "analytics", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    overall = report["overall"]
    figure = {f: page.locator(f"[data-figure={f}]").inner_text()
              for f in ("total", "answered", "pending", "timed_out", "approval_rate")}
    assert figure == {"total": str(overall["total"]), "answered": str(overall["answered"]),
                      "pending": str(overall["pending"]), "timed_out": str(overall["timed_out"]),
                      "approval_rate": f"{100 * overall['approval_rate']:.1f}%"}
    assert (overall["total"], overall["answered"], overall["pending"]) == (4, 3, 1)
    per_node = page.locator("tr[data-row=gate] td").all_inner_texts()
    assert per_node[:3] == [str(report["per_node"]["gate"][k])
                            for k in ("total", "answered", "pending")]
    assert page.locator("figure.chart svg").count() >= 3
    assert "approval 3" in page.locator("figure.chart svg").first.get_attribute("aria-label")
    assert page.locator("[data-oldest] tr").count() == 2  # the header and the one waiting
    shot(page, "dashboard", "dashboard")
    # it follows the stack without a reload
    page.wait_for_selector("text=Live updates: on")
    start(hitl, "Approve", "w-dash-3", {"request": "r3"})
    page.wait_for_selector("[data-figure=total]:text-is('5')")
    page.wait_for_selector("[data-figure=pending]:text-is('2')")


def test_audit_search_and_its_csv_export(hitl: HitlTestStack, web: LiveGateway,
                                         browser: Any) -> None:
    start(hitl, "Approve", "w-audit", {"request": "r"})
    hitl.resume("w-audit", "approve", {"reason": "fine"})
    start(hitl, "Approve", "w-other", {"request": "x"})
    page = browser.new_page()
    page.goto(f"{web.url}/ui/audit")
    page.fill("input[name=thread_id]", "w-audit")
    page.click("text=Search")
    page.wait_for_url(re.compile(r"thread_id=w-audit"))
    shown = int(page.locator("[data-audit-count]").get_attribute("data-audit-count") or 0)
    expected = run_cli(hitl, "audit", "--thread", "w-audit", "--format", "csv").stdout
    assert shown == len(expected.strip().splitlines()) - 1 > 1
    assert "w-other" not in page.locator("table.audit").inner_text()
    shot(page, "audit", "search")
    with page.expect_download() as download:
        page.click("[data-csv]")
    exported = download.value.path().read_text()
    assert list(csv.reader(io.StringIO(exported))) == list(csv.reader(io.StringIO(expected)))


def test_the_thread_page_steps_through_its_history(hitl: HitlTestStack, web: LiveGateway,
                                                   browser: Any) -> None:
    start(hitl, "Approve", "w-history", {"request": "r"})
    hitl.resume("w-history", "approve")
    page = browser.new_page()
    page.goto(f"{web.url}/ui/threads/w-history")
    total = int(page.locator("[data-timeline]").get_attribute("data-timeline") or 0)
    assert total > 4
    page.locator("a[aria-label='the thread after event 1']").click()
    assert page.locator("[data-then-status]").inner_text() == "running"
    paused_at = next(i for i, row in enumerate(
        page.locator("table.timeline tbody tr").all_inner_texts(), 1) if "ThreadPaused" in row)
    page.goto(f"{web.url}/ui/threads/w-history?at={paused_at}")
    assert page.locator("[data-then-status]").inner_text() == "paused"
    shot(page, "thread", "history")
    page.get_by_role("link", name=re.compile("event .* →")).click()
    assert page.locator("[data-then]").get_attribute("data-then") == str(paused_at + 1)
    beyond = page.goto(f"{web.url}/ui/threads/w-history?at={total + 5}")
    assert beyond is not None and beyond.status == 400
    assert f"is beyond the last event: thread 'w-history' has {total} events" in \
        page.locator("[role=alert]").inner_text()


def test_pages_use_the_keyboard_and_name_their_fields(hitl: HitlTestStack, web: LiveGateway,
                                                      browser: Any) -> None:
    start(hitl, "Approve", "w-keys", {"request": "r"})
    page = browser.new_page()
    open_request(page, web, "w-keys")
    # every input has a label
    for element in page.locator("textarea, input:not([type=hidden]), select").all():
        ident = element.get_attribute("id")
        assert ident and page.locator(f"label[for='{ident}']").count() == 1, ident
    page.focus("#reason")
    page.keyboard.type("by keyboard")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the focused Approve button
    completed(page)
    wait_for(lambda: hitl.status("w-keys").status == "completed",  # type: ignore[union-attr]
             what="the thread to complete")
