"""Text a report quotes (the question, the answers, the pages' sentences) shows as written: the dashboard's HTML and
the terminal read none of it as Markdown, while the report pass's own prose keeps its Markdown."""

import io
import json
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from heavy import display
from heavy.agent.gathered import unescaped
from heavy.aggregate import aggregate
from heavy.aggregate.markers import as_text
from heavy.api.report_html import report_html
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

pytestmark = pytest.mark.anyio

# an opened page's text as trafilatura writes it, Markdown-escaped
WITH_PAGE = source("http://corpus/with", r"The \`with\` statement calls \_\_exit\_\_() when its block ends. A context "
                                         r"manager defines \_\_enter\_\_() and \_\_exit\_\_().")
QUESTION = "Which method does a `with` block call at its end, *after* the body?"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)

    def handle_data(self, data) -> None:
        self.text += data


def _parsed(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


async def _python_report():
    backend = ScriptedBackend(lambda request: text("A **context manager** runs `__exit__()` at the end [1]."))
    results = [result(0, "__exit__()", cited=[WITH_PAGE]), result(1, "__exit__()", cited=[WITH_PAGE]),
               result(2, "the `with* block", evidence=[WITH_PAGE])]
    return await aggregate(job_id="j", question=QUESTION, mode="report", results=results, backend=backend)


async def test_an_answer_and_the_quoted_sentences_show_as_written_in_the_dashboard():
    job = await _python_report()
    assert job.answer == "__exit__()" and json.loads(job.to_json())["answer"] == "__exit__()"  # the JSON is raw
    html = report_html(job.markdown)
    shown = _parsed(html).text
    assert "Answer: __exit__() [1]" in shown  # was "Answer: exit() [1]", "exit" in bold
    assert QUESTION in shown
    assert "“The `with` statement calls __exit__() when its block ends.” [1]" in shown  # its escapes shown once
    assert "“the `with* block”: trajectory 3" in shown
    # the report pass's own Markdown is still read as Markdown
    assert "<strong>context manager</strong>" in html and "<code>__exit__()</code>" in html
    assert _parsed(html).tags.count("code") == 1 and _parsed(html).tags.count("strong") == 2


async def test_an_answer_shows_as_written_on_a_terminal(monkeypatch):
    job = await _python_report()
    screen = io.StringIO()
    monkeypatch.setattr(display, "Console", lambda **options: Console(file=screen, force_terminal=True,
                                                                      color_system=None, width=200))
    display.print_report(job.markdown)
    assert "Answer: __exit__() [1]" in screen.getvalue()


NASTY = st.lists(st.sampled_from([*"\\`*_[]<>&|~#!-+=.)(:\"' \n\tx1é", "1.", "&amp;", "<b>", "```", "[1]", "    "])
                 ).map("".join)


@given(NASTY)
def test_any_text_quoted_into_a_report_renders_as_written(written):
    shown = _parsed(report_html(f"**Answer:** {as_text(written)}"))
    # as written, but Markdown's escapes a page's text holds ("\\_"), which are undone as the renderer did
    assert " ".join(shown.text.split()) == " ".join(f"Answer: {unescaped(written)}".split())
    assert set(shown.tags) <= {"p", "strong", "br"}  # one paragraph: no list, heading, code, link or quote
