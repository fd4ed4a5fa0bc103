"""Property tests of a report's citations: whatever the report pass writes, the Markdown cites only sources it lists,
lists only sources it cites, all of them fetched, and links to no page no trajectory fetched."""

import asyncio
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heavy.aggregate import aggregate
from heavy.aggregate.markers import cited_numbers
from heavy.api.report_html import report_html
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import EIFFEL, LOUVRE, result

WIKI = source("http://corpus/wiki", "The Eiffel Tower was finished in 1889.[3] It is 330 metres tall.[1] See a[2].")
FETCHED = (EIFFEL, LOUVRE, WIKI)
PIECES = [
    "The Eiffel Tower was finished in 1889", "The Louvre pyramid was finished in 1989", "It is 330 metres tall",
    "Astronauts built it on the moon", " [1]", " [2]", " [3]", " [0]", " [99]", " [1, 2]", " [1-3]", " [2–1]",
    " 【1】", " [1][2]", " [[1]]", "[x](http://evil.example)", "[x](http://corpus/eiffel)", "[x](javascript:alert(1))",
    "[y [2]](http://evil.example \"t\")", "<script>alert(1)</script>",
    "`a[1]`", "\n```\nprint(a[2])\n```\n", "``x [3] y``",
    "\n## Heading [3]\n", "\n# [t](//evil.example)\n", "\n| year [1] | x |\n|---|---|\n", ". ", ".", "\n- ", "\n1. ",
    "[z](<http://evil.example/a b>)", "<ftp://evil.example>", "[w](http://corpus/eiffel \"t\")",
    "…", "...", "é ñ 中文 🙂", "\u200b", "\\[1]", "**", "_", "[", "]", "(", ")", ":", "Researcher 1 answered: 1889",
]
ANSWERS = ["1889", "1887 [2]", "It was finished in 1889 [1].", "", "The tower [1-2] is tall 【3】.", "<b>1889</b>"]


def _body(markdown: str) -> str:
    return markdown.split("\n\n## Sources\n\n")[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written=st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
       answers=st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=4),
       question=st.sampled_from(["When was the Eiffel Tower finished?", "Is x[1] in [1, 2]?", ""]))
def test_the_report_cites_exactly_its_listed_fetched_sources(written, answers, question):
    results = [result(k, answer, cited=[FETCHED[k % 3]] if answer else [], evidence=FETCHED)
               for k, answer in enumerate(answers)]
    backend = ScriptedBackend(lambda request: text(written))
    job = asyncio.run(aggregate(job_id="j", question=question, mode="report", results=results, backend=backend))
    body = _body(job.markdown)
    listed = list(range(1, len(job.sources) + 1))
    assert sorted(cited_numbers(body)) == listed
    assert {s.url for s in job.sources} <= {s.url for s in FETCHED}
    assert [s["url"] for s in json.loads(job.to_json())["sources"]] == [s.url for s in job.sources]
    html = report_html(job.markdown)
    # a reader follows links to the listed sources only: citations, and the Sources list's own
    assert set(re.findall(r'href="([^"]*)"', html)) <= {f"#src-{n}" for n in listed} | {s.url for s in job.sources}
    assert sorted({int(n) for n in re.findall(r'data-cite="(\d+)"', html)}) == listed
    assert "<script" not in html and 'href="javascript' not in html
