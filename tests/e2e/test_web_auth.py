"""The web pages on a stack with authorization: signing in with a token (kept in an HttpOnly,
SameSite=Strict cookie), each person's inbox holding only what they may answer, refusals shown
in words and audited with the principal, claims from the page, forms from another site
refused."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hitlflow.testing import HitlTestStack
from tests.e2e.test_gateway_auth import (  # the stack with users, and its helpers
    audit,
    claims,
    gateway,
    signed,
    stack,
    start,
    token,
)

__all__ = ["stack"]  # the fixture, imported for these tests


@pytest.fixture
def pages(stack: HitlTestStack) -> Iterator[TestClient]:
    with gateway(stack) as client:
        yield client


def sign_in(pages: TestClient, stack: HitlTestStack, name: str, *groups: str) -> None:
    response = pages.post("/ui/login", data={"token": token(stack, name, *groups),
                                             "next": "/ui/inbox"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/inbox"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie


def request_link(html: str, thread_id: str) -> str:
    found = re.search(rf'href="(/ui/requests/{thread_id}/[^"]+)"', html)
    assert found, f"no link to a request of {thread_id} in the page"
    return found.group(1)


def form_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


def test_pages_ask_to_sign_in_and_take_only_valid_tokens(stack: HitlTestStack,
                                                         pages: TestClient) -> None:
    first = pages.get("/ui/inbox", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/ui/login?next=%2Fui%2Finbox")
    login = pages.get(first.headers["location"])
    assert "hitlflow token NAME" in login.text and 'name="token"' in login.text

    forged = signed(stack, claims("alice"), key="not-the-stack-key-" + "x" * 32)
    refused = pages.post("/ui/login", data={"token": forged, "next": "/ui/inbox"})
    assert refused.status_code == 401
    assert "signature" in refused.text.lower() and "Traceback" not in refused.text
    expired = signed(stack, claims("alice", exp=1))
    assert pages.post("/ui/login", data={"token": expired}).status_code == 401
    # a sign-in only ever leads to these pages, never to another site
    response = pages.post("/ui/login", data={"token": token(stack, "alice"),
                                             "next": "https://elsewhere.example/"},
                          follow_redirects=False)
    assert response.headers["location"] == "/ui/inbox"

    sign_in(pages, stack, "alice", "finance")
    inbox = pages.get("/ui/inbox")
    assert inbox.status_code == 200 and "Signed in as" in inbox.text and ">alice<" in inbox.text
    pages.post("/ui/logout")
    assert pages.get("/ui/inbox", follow_redirects=False).status_code == 303


def test_each_inbox_holds_what_its_person_may_answer(stack: HitlTestStack,
                                                     pages: TestClient) -> None:
    assigned, _ = start(stack, "Assigned")  # for alice and the finance group
    open_to_all, _ = start(stack, "Open")
    sign_in(pages, stack, "bob")
    inbox = pages.get("/ui/inbox").text
    assert open_to_all in inbox and assigned not in inbox
    sign_in(pages, stack, "carol", "finance")
    inbox = pages.get("/ui/inbox").text
    assert open_to_all in inbox and assigned in inbox


def test_an_answer_from_someone_it_is_not_for_is_refused_in_words(
        stack: HitlTestStack, pages: TestClient) -> None:
    assigned, _ = start(stack, "Assigned")
    sign_in(pages, stack, "carol", "finance")
    link = request_link(pages.get("/ui/inbox").text, assigned)
    page = pages.get(link).text
    sign_in(pages, stack, "bob")  # a page carol had open, answered by bob
    answer = pages.post(link, data={**form_of(page), "action": "approve"})
    assert answer.status_code == 403
    assert "You may not answer this request." in answer.text
    assert "Code: <code>forbidden</code>" in answer.text
    refusal = [e for e in audit(stack, assigned) if e["event"] == "rejected"]
    assert [(e["code"], e["principal"]) for e in refusal] == [("forbidden", "bob")]
    assert stack.status(assigned).status == "paused"  # type: ignore[union-attr]

    sign_in(pages, stack, "alice")
    answer = pages.post(link, data={**form_of(pages.get(link).text), "action": "approve",
                                    "reason": "ok"}, follow_redirects=False)
    assert answer.status_code == 303
    [accepted] = [e for e in audit(stack, assigned) if e["event"] == "accepted"]
    assert (accepted["principal"], accepted["responder"]) == ("alice", "alice")


def test_a_claim_from_the_page_keeps_others_out(stack: HitlTestStack,
                                                pages: TestClient) -> None:
    assigned, _ = start(stack, "Assigned")
    sign_in(pages, stack, "alice", "finance")
    link = request_link(pages.get("/ui/inbox").text, assigned)
    claimed = pages.post(f"{link}/claim")
    assert claimed.status_code == 200
    assert "You claimed this request" in claimed.text and "Release" in claimed.text
    sign_in(pages, stack, "carol", "finance")
    assert assigned not in pages.get("/ui/inbox").text  # claimed by alice: not carol's now
    answer = pages.post(link, data={**form_of(pages.get(link).text), "action": "approve"})
    assert answer.status_code in (403, 409)
    assert "claimed" in answer.text.lower()
    assert stack.status(assigned).status == "paused"  # type: ignore[union-attr]


def test_a_form_sent_from_another_site_is_refused(stack: HitlTestStack,
                                                  pages: TestClient) -> None:
    thread, _ = start(stack, "Open")
    sign_in(pages, stack, "bob")
    link = request_link(pages.get("/ui/inbox").text, thread)
    answer = pages.post(link, data={**form_of(pages.get(link).text), "action": "approve"},
                        headers={"Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 403 and "another site" in answer.text
    assert stack.status(thread).status == "paused"  # type: ignore[union-attr]


def test_an_answer_to_a_page_shown_before_a_reassignment_is_refused_stale(
        stack: HitlTestStack, pages: TestClient) -> None:
    assigned, _ = start(stack, "Assigned")
    sign_in(pages, stack, "alice", "finance")
    link = request_link(pages.get("/ui/inbox").text, assigned)
    before = form_of(pages.get(link).text)
    boss = {"Authorization": f"Bearer {token(stack, 'boss')}"}
    moved = pages.post(f"/threads/{assigned}/reassign", json={"to": ["alice"]}, headers=boss)
    assert moved.status_code == 200, moved.text
    answer = pages.post(link, data={**before, "action": "approve"})
    assert answer.status_code == 409
    assert "This request changed since this page was shown" in answer.text
    after = form_of(answer.text)  # the page shown again is the request as it is now
    assert after["shown"] != before["shown"]
    assert pages.post(link, data={**after, "action": "approve"},
                      follow_redirects=False).status_code == 303
    assert stack.status(assigned).status == "completed"  # type: ignore[union-attr]


def test_a_quorum_vote_from_the_page_says_the_request_stays_open(
        stack: HitlTestStack, pages: TestClient) -> None:
    thread, _ = start(stack, "Quorum")  # 2 approvals of alice, bob, carol
    sign_in(pages, stack, "alice")
    link = request_link(pages.get("/ui/inbox").text, thread)
    page = pages.get(link).text
    assert "2 approvals; votes so far: none" in page
    voted = pages.post(link, data={**form_of(page), "action": "approve"})
    assert voted.status_code == 200
    assert "Your vote was recorded; the request stays open" in voted.text
    assert stack.status(thread).status == "paused"  # type: ignore[union-attr]
    again = pages.post(link, data={**form_of(pages.get(link).text), "action": "approve"})
    assert again.status_code == 409 and "You have voted on this request already." in again.text
    sign_in(pages, stack, "bob")
    page = pages.get(link).text
    assert "votes so far: alice" in page
    decided = pages.post(link, data={**form_of(page), "action": "approve"})
    assert "Your answer was recorded." in decided.text
    assert stack.status(thread).status == "completed"  # type: ignore[union-attr]
