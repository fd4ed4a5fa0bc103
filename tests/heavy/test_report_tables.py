"""A Markdown table the report pass writes stays a table: its rows are claims, checked whole with their cells'
citations, its header and delimiter rows pass, and a table left with no row goes."""

import pytest

from heavy.aggregate.citations import filter_claims
from heavy.aggregate.claim_check import check_claims
from heavy.api.report_html import report_html
from tests.heavy.fakes import ScriptedBackend, text
from tests.heavy.test_aggregate import EIFFEL, LOUVRE

PAGES = [EIFFEL, LOUVRE]
TEXTS = {s.url: s.snippet for s in PAGES}
TABLE = ("The Eiffel Tower was finished in 1889 [1].\n\n"  # a row may repeat a finding: it is its table's
         "| Building [1] | Finished |\n"
         "|---|:---:|\n"
         "| Eiffel Tower | 1889 [1] |\n"
         "| Louvre pyramid | 1989 [2] |\n"
         "| Colosseum | 80 [7] |")


def test_a_table_keeps_its_delimiter_and_its_rows_are_checked_as_claims():
    filtered = filter_claims(TABLE, PAGES, TEXTS, "When were they finished?")
    assert filtered.body.splitlines()[2:] == ["| Building | Finished |", "|---|:---:|", "| Eiffel Tower | 1889 [1] |",
                                              "| Louvre pyramid | 1989 [2] |"]
    assert "| Colosseum | 80 [7] |" in filtered.dropped  # a row citing no fetched page is dropped, as any claim
    html = report_html(filtered.body)
    assert "<table>" in html and html.count("<tr>") == 3 and 'data-cite="2"' in html


def test_a_row_without_a_marker_is_attributed_in_its_last_cell():
    body = "| Tower | Finished |\n|---|---|\n| The Eiffel Tower | finished in 1889 |"
    filtered = filter_claims(body, PAGES, TEXTS)
    assert filtered.body.splitlines()[2] == "| The Eiffel Tower | finished in 1889 [1] |"


def test_a_table_with_no_row_left_goes_whole():
    body = "The Louvre pyramid was finished in 1989 [2].\n\n| Tower | Finished |\n|---|---|\n| Colosseum | 80 [9] |"
    assert filter_claims(body, PAGES, TEXTS).body == "The Louvre pyramid was finished in 1989 [2]."


@pytest.mark.anyio
async def test_the_claim_check_weighs_a_row_whole_and_takes_out_a_refuted_one():
    def judge(request):
        return text("No." if "Claim: Louvre pyramid 1989" in request.messages[0]["content"] else "Yes.")
    body = filter_claims(TABLE, PAGES, TEXTS, "When were they finished?").body
    checked = await check_claims(body, PAGES, TEXTS, ScriptedBackend(judge))
    assert checked.refuted == ("| Louvre pyramid | 1989 [2] |",)
    assert checked.body.splitlines()[2:] == ["| Building | Finished |", "|---|:---:|", "| Eiffel Tower | 1889 [1] |"]
    every_row_refuted = await check_claims(body, PAGES, TEXTS, ScriptedBackend(lambda request: text("No.")))
    assert "|" not in every_row_refuted.body
