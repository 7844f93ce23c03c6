"""User agents for the guide's five example workflows, registered like any user's own agents.

Point the services at this module with ``HITLFLOW_AGENTS=examples/agents.py`` (a file path) or
``HITLFLOW_AGENTS=examples.agents`` (a module). Every agent here is deterministic and works
offline: simple text analysis, templates and rules, so the examples run the same everywhere.

========================  ====================  ==============================================
agent type                used by               what it does
========================  ====================  ==============================================
validation_agent          ApprovalFlow          checks a request is non-empty and not too long
processing_agent          ApprovalFlow          processes an approved request
content_generator         ContentFlow           drafts a short text from a request
analysis_agent            Decision-, Require-   finds themes, complexity and open questions
                          mentsFlow
implementation_agent      DecisionFlow          turns the chosen approach into a plan
refinement_agent          RequirementsFlow      turns free-text requirements into a numbered,
                                                prioritised list
conversation_agent        ConsultationFlow      picks the next topic, or ends the conversation
summary_agent             ConsultationFlow      summarises the whole conversation
batch_summary_agent       BatchReview           counts reviewed items by the option chosen
========================  ====================  ==============================================
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hitlflow.agents import AgentContext, AgentResult, agent

# -- small text helpers ------------------------------------------------------------------------

_STOPWORD_TEXT = """
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just let like me more most
my need needs no nor not now of off on once only or other our ours out over own please same she
should so some such than that the their theirs them then there these they this those through
to too under until up us very was we were what when where which while who whom why will with
would you your yours think want wants new make made get use using used one two three first
lets let's sure ok okay yes thing things really also may might must shall per via etc thanks
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

THEMES: dict[str, tuple[str, ...]] = {
    "performance": ("slow", "latency", "fast", "speed", "performance", "timeout", "load",
                    "throughput", "response time", "lag"),
    "security": ("security", "secure", "auth", "authentication", "login", "password", "oauth",
                 "encryption", "permission", "attack", "vulnerability", "mfa", "multi-factor"),
    "scalability": ("scale", "scaling", "growth", "traffic", "users", "peak", "capacity",
                    "concurrent", "millions"),
    "reliability": ("outage", "downtime", "crash", "error", "errors", "failure", "failures",
                    "reliable", "reliability", "incident", "bug", "bugs", "anomaly"),
    "cost": ("cost", "budget", "expensive", "cheap", "price", "pricing", "spend", "savings"),
    "data": ("database", "data", "storage", "migration", "schema", "sql", "backup", "records"),
    "user experience": ("ui", "ux", "design", "mobile", "accessibility", "onboarding",
                        "usability", "checkout", "customer", "customers"),
    "integration": ("api", "apis", "integration", "integrate", "webhook", "third-party",
                    "partner", "sync", "microservices", "services"),
    "compliance": ("gdpr", "compliance", "audit", "regulation", "legal", "privacy", "hipaa",
                   "sox"),
}

QUESTIONS: dict[str, str] = {
    "performance": "What response time is acceptable at peak load?",
    "security": "Who may access what, and how do users sign in?",
    "scalability": "How many users or requests must it handle in a year?",
    "reliability": "What downtime is acceptable, and how is failure detected?",
    "cost": "What budget is available, one-off and per month?",
    "data": "Which data must be kept, for how long, and where?",
    "user experience": "Who are the users and which task matters most to them?",
    "integration": "Which systems must it talk to, and through which interfaces?",
    "compliance": "Which regulations apply and what must be auditable?",
}

_WORD = re.compile(r"[a-z][a-z0-9\-']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _text_of(value: Any) -> str:
    """Any input (text, an object, a list) as plain text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(_text_of(v) for k, v in value.items() if k != "history")
    if isinstance(value, Iterable):
        return " ".join(_text_of(v) for v in value)
    return str(value)


def _first_input(inputs: dict[str, Any]) -> Any:
    return next(iter(inputs.values()), None) if inputs else None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _keywords(text: str, limit: int = 5) -> list[str]:
    """The most frequent meaningful words, first appearance breaking ties."""
    words = [w.strip("-'") for w in _words(text)]
    words = [w for w in words if len(w) > 2 and w not in STOPWORDS]
    counts = Counter(words)
    order = {w: i for i, w in reversed(list(enumerate(words)))}
    return sorted(counts, key=lambda w: (-counts[w], order[w]))[:limit]


def _themes(text: str) -> list[str]:
    lowered = f" {text.lower()} "
    words = set(_words(text))
    found = []
    for theme, markers in THEMES.items():
        if any((m in words) if " " not in m else (m in lowered) for m in markers):
            found.append(theme)
    return found


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _clip(text: str, length: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


# -- ApprovalFlow ------------------------------------------------------------------------------


@agent("validation_agent", inline=True)
def validate_request(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A request is valid when it is non-empty text (or an object with a non-empty 'request')."""
    request = _first_input(inputs)
    text = request.get("request") if isinstance(request, dict) else request
    problems = []
    if not isinstance(text, str) or not text.strip():
        problems.append("request is empty")
    elif len(text) > 2000:
        problems.append("request is longer than 2000 characters")
    summary = {"request": text, "valid": not problems, "problems": problems}
    return AgentResult(value=summary, success=not problems)


@agent("processing_agent", inline=True)
def process_request(inputs: dict[str, Any], ctx: AgentContext) -> str:
    request = _first_input(inputs)
    return f"processed: {request}"


# -- ContentFlow -------------------------------------------------------------------------------


@agent("content_generator", inline=True)
def generate_content(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A short draft from a request: text, or ``{"topic", "audience", "tone", "points"}``."""
    request = _first_input(inputs)
    if isinstance(request, Mapping):
        topic = str(request.get("topic") or request.get("title") or _text_of(request))
        audience = str(request.get("audience") or "readers")
        tone = str(request.get("tone") or "clear")
        points = [str(p) for p in request.get("points") or []]
    else:
        topic, audience, tone, points = _text_of(request), "readers", "clear", []
    topic = " ".join(topic.split())
    if not topic:
        raise ValueError("nothing to write about: the content request is empty")
    if not points:
        points = [f"What changes: {topic[0].lower() + topic[1:]}",
                  *(f"Why it matters for {theme}" for theme in _themes(topic)[:2]),
                  "What to do next, and whom to ask"]
    title = _clip(topic.rstrip("."), 60)
    title = title[0].upper() + title[1:]
    opening = {
        "urgent": f"Action needed, {audience}.",
        "friendly": f"Hello {audience}!",
        "formal": f"Dear {audience}.",
    }.get(tone, f"For {audience}.")
    body = "\n".join(f"- {point}" for point in points)
    draft = (f"{title}\n\n{opening} This note covers {_clip(topic, 120)}.\n\n{body}\n\n"
             "Questions are welcome; reply to this message.")
    return AgentResult(value=draft, details={"words": len(draft.split()), "points": len(points)})


# -- DecisionFlow and RequirementsFlow ---------------------------------------------------------


def analyse(text: str) -> dict[str, Any]:
    themes = _themes(text)
    words = len(text.split())
    score = len(themes) + (2 if words > 120 else 1 if words > 40 else 0)
    return {
        "themes": themes,
        "key_terms": _keywords(text),
        "complexity": "high" if score >= 5 else "medium" if score >= 2 else "low",
        "open_questions": [QUESTIONS[t] for t in themes[:3]] or [
            "What does success look like, and how will it be measured?"],
        "words": words,
    }


def describe_analysis(analysis: dict[str, Any]) -> str:
    themes = _join(analysis["themes"]) or "no specific theme"
    return (f"Themes: {themes}. Complexity: {analysis['complexity']}. "
            f"Key terms: {', '.join(analysis['key_terms']) or 'none'}. "
            f"Open questions: {' '.join(analysis['open_questions'])}")


@agent("analysis_agent", inline=True)
def analyse_problem(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """Themes, complexity, key terms and open questions of a problem or project brief."""
    text = _text_of(_first_input(inputs)).strip()
    if not text:
        raise ValueError("nothing to analyse: the input is empty")
    analysis = analyse(text)
    return AgentResult(value=describe_analysis(analysis), details=analysis)


APPROACH_STEPS: dict[str, list[str]] = {
    "fast": ["Patch the narrowest point that fixes the problem",
             "Add a regression test for it",
             "Ship behind a feature flag and watch the metrics"],
    "robust": ["Write a one-page design and review it",
               "Refactor the affected component behind a stable interface",
               "Cover it with unit and end-to-end tests",
               "Roll out in stages with monitoring and a rollback plan"],
    "hybrid": ["Ship a small fix now, behind a feature flag",
               "Write the design for the lasting solution meanwhile",
               "Replace the fix step by step, each step tested",
               "Remove the flag once the lasting solution has run a week"],
}
THEME_STEPS: dict[str, str] = {
    "performance": "Add a load test with the target response time",
    "security": "Review access rules and add tests for refused access",
    "scalability": "Load-test at twice the expected peak",
    "reliability": "Add alerts on errors and a runbook for failures",
    "data": "Back up the data and rehearse the migration",
    "integration": "Agree the interface contract with the other systems",
    "compliance": "Record decisions for the audit trail",
    "user experience": "Test the change with five users",
    "cost": "Estimate running costs and set a budget alert",
}
WEEKS = {"fast": 1, "robust": 4, "hybrid": 2}


@agent("implementation_agent", inline=True)
def implement(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A step-by-step plan for the chosen approach (a choice answer or plain text)."""
    chosen = _first_input(inputs)
    option = chosen.get("option") if isinstance(chosen, Mapping) else chosen
    option = str(option or "").strip()
    if not option:
        raise ValueError("no approach was chosen")
    lowered = option.lower()
    kind = next((k for k in ("hybrid", "robust", "fast") if k in lowered), "hybrid")
    problem = _text_of(ctx.state.get("problem_description") or ctx.state.get("problem_data"))
    extra = [THEME_STEPS[t] for t in _themes(problem) if t in THEME_STEPS][:2]
    steps = [*APPROACH_STEPS[kind], *extra]
    plan = "; ".join(f"{i}. {step}" for i, step in enumerate(steps, 1))
    justification = chosen.get("justification") if isinstance(chosen, Mapping) else None
    why = f" (because: {justification})" if justification else ""
    weeks = WEEKS[kind] + len(extra) // 2
    result = f"{option}{why} — {len(steps)} steps, about {weeks} week(s): {plan}"
    return AgentResult(value=result, details={"approach": kind, "steps": steps, "weeks": weeks})


_SPLIT_ITEMS = re.compile(r"\n+|;\s*|(?<=[.!?])\s+|\s*•\s*|^\s*[-*]\s*", re.MULTILINE)
_PRIORITY_WORDS = (
    ("high", ("must", "critical", "required", "essential", "security", "urgent", "legal")),
    ("low", ("could", "nice to have", "optional", "maybe", "later", "eventually")),
)


def _requirement_items(answer: Any) -> tuple[list[str], str | None]:
    """The separate requirements in an answer, and a priority it states for all of them.

    A text answer is split into sentences, lines, bullets and ';'-separated parts; a
    structured answer (``{"response", "requirements": [...], "priority"}``) gives its list.
    """
    stated = None
    if isinstance(answer, Mapping):
        stated = str(answer["priority"]) if answer.get("priority") else None
        listed = answer.get("requirements")
        text = _text_of(listed if listed else answer.get("text") or answer.get("response"))
        parts = [str(r) for r in listed] if isinstance(listed, list) else _SPLIT_ITEMS.split(text)
    else:
        parts = _SPLIT_ITEMS.split(_text_of(answer))
    items = [" ".join(p.split()).rstrip(".") for p in parts if p and p.strip()]
    return [i for i in items if i], stated


def _priority(item: str, default: str | None) -> str:
    lowered = item.lower()
    for level, words in _PRIORITY_WORDS:
        if any(w in lowered for w in words):
            return level
    return default or "medium"


@agent("refinement_agent", inline=True)
def refine_requirements(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A numbered, de-duplicated, prioritised requirements list (high first)."""
    items, stated = _requirement_items(_first_input(inputs))
    seen: set[str] = set()
    unique = []
    for item in items:
        key = item.lower()
        if key not in seen:
            seen.add(key)
            unique.append(item[0].upper() + item[1:])
    if not unique:
        raise ValueError("no requirements were given")
    brief = _text_of(ctx.state.get("project_brief"))
    covered = set(_themes(" ".join(unique)))
    still_open = [QUESTIONS[t] for t in _themes(brief) if t not in covered and t in QUESTIONS]
    rank = {"high": 0, "medium": 1, "low": 2}
    ranked = sorted(((_priority(i, stated), i) for i in unique), key=lambda p: rank.get(p[0], 1))
    document = "; ".join(f"{n}. [{level}] {item}" for n, (level, item) in enumerate(ranked, 1))
    if still_open:
        document += f". Still open from the brief: {' '.join(still_open)}"
    requirements = [{"priority": level, "requirement": item} for level, item in ranked]
    return AgentResult(value=f"{len(ranked)} requirements: {document}",
                       details={"requirements": requirements, "open_questions": still_open})


# -- ConsultationFlow --------------------------------------------------------------------------

CLOSING = ("that's all", "that is all", "nothing else", "no more", "no further", "wrap up",
           "we're done", "we are done", "let's stop", "thank you, bye", "all clear")
DEFAULT_MAX_TURNS = 5


def _latest_reply(ctx: AgentContext) -> Mapping[str, Any]:
    """The most recent conversation answer in the state (the one with the longest history)."""
    replies = [v for v in ctx.state.values() if isinstance(v, Mapping) and "history" in v]
    return max(replies, key=lambda v: len(v["history"]), default={})


@agent("conversation_agent", inline=True)
def next_topic(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """Picks what to discuss next; routes to failure (the summary) when the talk is done.

    Done when the person says so ("that's all", "nothing else", ...) or after ``max_turns``
    turns (node context, default 5). Otherwise the next topic is the person's first follow-up
    question not yet discussed, else the key terms of their last message.
    """
    turns = [t for t in ctx.conversation if t.get("message")]
    latest = str(turns[-1]["message"]) if turns else _text_of(_first_input(inputs))
    max_turns = int(ctx.context.get("max_turns", DEFAULT_MAX_TURNS))
    lowered = latest.lower()
    if not latest.strip() or any(phrase in lowered for phrase in CLOSING):
        return AgentResult(value="closing the consultation", success=False,
                           details={"reason": "the person closed the conversation"})
    if len(turns) >= max_turns:
        return AgentResult(value="closing the consultation", success=False,
                           details={"reason": f"{max_turns} turns reached"})
    asked = {str(t.get("prompt", "")) for t in ctx.conversation}
    follow_ups = [str(q) for q in _latest_reply(ctx).get("follow_up_questions") or []]
    for question in follow_ups:
        if not any(question.rstrip("?").lower() in prompt.lower() for prompt in asked):
            topic = question.rstrip("?")
            topic = topic[0].lower() + topic[1:]
            return AgentResult(value=topic, details={"from": "follow_up_question"})
    keywords = _keywords(latest, 3)
    topic = _join(keywords) if keywords else "what you just described"
    return AgentResult(value=topic, details={"from": "keywords", "turns": len(turns)})


@agent("summary_agent", inline=True)
def summarise(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """A summary of the whole conversation: turns, main points, questions raised."""
    turns = [t for t in ctx.conversation if t.get("message")]
    topic = _text_of(ctx.state.get("consultation_topic") or ctx.state.get("topic_data"))
    messages = [str(t["message"]) for t in turns]
    everything = " ".join(messages)
    points = [_clip(_sentences(m)[0], 80).rstrip(".!") for m in messages if _sentences(m)]
    questions = [s for m in messages for s in _sentences(m) if s.endswith("?")]
    questions += [str(q) for reply in ctx.state.values() if isinstance(reply, Mapping)
                  for q in reply.get("follow_up_questions") or []]
    who = sorted({str(t.get("responder")) for t in turns if t.get("responder")})
    summary = (
        f"{len(turns)} turn(s) on {topic or 'the topic'}"
        + (f" with {', '.join(who)}" if who else "")
        + (f". Main points: {' | '.join(points)}" if points else ". Nothing was said")
        + (f". Themes: {_join(_themes(everything))}" if _themes(everything) else "")
        + (f". Questions raised: {' '.join(dict.fromkeys(questions))}" if questions else "")
    )
    summary += "" if summary.endswith(("?", ".")) else "."
    return AgentResult(value=summary, details={"turns": len(turns), "points": points,
                                               "questions": list(dict.fromkeys(questions))})


# -- batch review (docs/patterns.md, examples/advanced.csv) ------------------------------------


@agent("batch_summary_agent", inline=True)
def summarise_batches(inputs: dict[str, Any], ctx: AgentContext) -> AgentResult:
    """Counts the items of a batch review by the option chosen for their batch."""
    reviews = _first_input(inputs)
    if not isinstance(reviews, list):
        raise ValueError(f"expected the list of batch answers, got {type(reviews).__name__}")
    by_option: Counter[str] = Counter()
    total = 0
    for review in reviews:
        value = review.get("value") if isinstance(review, Mapping) else None
        option = value.get("option") if isinstance(value, Mapping) else review.get("action")
        count = len(review.get("items") or [])
        total += count
        by_option[str(option)] += count
    parts = [f"{count}: {option}" for option, count in by_option.items()]
    summary = f"{total} items in {len(reviews)} batches: {'; '.join(parts) or 'nothing'}"
    return AgentResult(value=summary, details={"items": total, "by_option": dict(by_option)})
