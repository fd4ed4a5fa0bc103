"""The report's list of the trajectories' answers: each checked like a claim of the findings (which of its sentences a
fetched page holds), where they disagreed, those that did not answer and why."""

from __future__ import annotations

import re
from collections.abc import Sequence

from heavy.agent.gathered import SUPPORTING_SOURCES, lowered
from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.citations import FilteredReport, filter_claims
from heavy.aggregate.evidence import SENTENCE_END
from heavy.aggregate.markers import MARKER, as_text, cited_numbers
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.shorten import YES_NO, is_short
from heavy.aggregate.sources import source_key, source_numbers
from heavy.aggregate.vote import Vote
from heavy.tools.base import Source

QUOTED_ANSWER_WORDS = 30  # the disagreement list quotes answers; a copied page would drown it
_WRAPPED_LINE = re.compile(r"[ \t]*\n[ \t]*(?!\n|[-*+] |\d+\. )")
URL = re.compile(r"[(<\[]?https?://[^\s)>\]]+[)>\]]?")


def in_own_words(decided: Vote) -> bool:
    """No answer had a majority, and some are sentences: whether they agree, the vote cannot tell."""
    return not decided.answer and any(not is_short(g.answer) for g in decided.groups)


def answers_on_pages(question: str, decided: Vote, union: Sequence[Source],
                      texts: dict[str, str]) -> dict[str, FilteredReport]:
    """Each answer in sentences, checked like a claim of the findings: which of its sentences a fetched passage
    holds, and where. A short answer, too short to check by its words, is looked for as it stands; a yes or no
    cannot be looked for at all."""
    if not texts:
        return {}
    checked = {}
    for group in decided.groups:
        # a line break inside a sentence (an answer copied from a page) does not end it; one before a list item does.
        # Its markers go: a trajectory numbers its own search results, not the report's sources, and a sentence too
        # short to check by its words stood on its marker alone
        answer = MARKER.sub("", _WRAPPED_LINE.sub(" ", group.answer))
        if not is_short(group.answer):
            checked[group.answer] = filter_claims(answer, union, texts, question)
        elif normalize_answer(group.answer) not in YES_NO and len(needle := lowered(answer).strip(" .")) > 2:
            held = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)")
            on = tuple(n for n, s in enumerate(union, start=1) if held.search(lowered(texts.get(s.url, ""))))
            on = on[:SUPPORTING_SOURCES]
            # a short sentence ("The tower was finished in 1889") is rarely on a page as written: check its words
            by_words = filter_claims(answer, union, texts, question) if not on else None
            checked[group.answer] = (by_words if by_words and by_words.body else
                                     FilteredReport(body=group.answer if on else "", cited=on,
                                                    dropped=() if on else (group.answer,)))
    return checked


def _on_pages(filtered: FilteredReport) -> str:
    """' — its words are on [2]', as the answer list shows the check of an answer. A sentence that only restates
    the question is neither on a page nor against the answer: it is not counted. Sentences the model's check
    refuted are on their page by words only, and said to be."""
    kept = len([s for s in SENTENCE_END.split(filtered.body) if s.strip()]) if filtered.body else 0
    unsupported = [s for s in filtered.dropped if s not in filtered.restated]
    marks = "".join(f"[{n}]" for n in filtered.cited)
    refuted = "".join(f"[{n}]" for n in _refuted_on(filtered))
    if not kept and filtered.refuted:
        return f" — its words are on {refuted}, but the model's check found that page does not support it"
    if not kept:
        return " — it only restates the question" if not unsupported else " — its words are on no fetched page"
    against = (f" ({len(filtered.refuted)} more by its words on {refuted}, which the model's check found does not "
               "support it)" if filtered.refuted else "")
    if not unsupported and not filtered.refuted:
        return f" — its words are on {marks}"
    total = kept + len(unsupported) + len(filtered.refuted)
    return f" — {kept} of its {total} sentences {'is' if kept == 1 else 'are'} on {marks}{against}"


def _refuted_on(filtered: FilteredReport) -> tuple[int, ...]:
    """The sources whose words the refuted sentences cite, in order."""
    return tuple(dict.fromkeys(n for sentence in filtered.refuted for n in sorted(cited_numbers(sentence))))


def answer_list(decided: Vote, results: Sequence[TrajectoryResult], on_pages: dict[str, FilteredReport],
                   model_checked: bool = False, cited_in: Sequence[Source] = ()) -> str:
    """The answers, each with the pages that hold its words; with no findings written (`cited_in`: the sources), with
    the pages its trajectories cited too, which the findings would have merged."""
    # a trajectory that failed says why (the endpoint down, a refusal): "no answer" alone reads as nothing found
    failed = [r for r in results if not r.answered and r.error]
    silent = [r.index + 1 for r in results if not r.answered and not r.error]
    voting = {i for g in decided.groups for i in g.members}
    # an answer that restates the question, or a bare yes to a "who" question, is no vote, but it was written
    unusable = [r for r in results if r.answered and r.index not in voting]
    if not (decided.groups or unusable or failed) or (len(decided.groups) == 1 and not silent and not unusable
                                                      and not failed):
        return ""  # the headline says it all
    # sentences in other words may say the same thing: a list of them is no evidence of disagreement, and neither is
    # one answer beside trajectories that found none
    disagreed = len(decided.groups) > 1 and not in_own_words(decided)
    title = "Where the trajectories disagreed" if disagreed else "What each trajectory answered"
    lines = [f"## {title}", ""]
    cites = _cites(decided, results, cited_in)
    lines += [f"- “{_quoted(g.answer)}”: {_trajectories([i + 1 for i in g.members])}"
              + (_on_pages(on_pages[g.answer]) if g.answer in on_pages else "") + cites.get(g.answer, "")
              for g in decided.groups]
    lines += [f"- “{_quoted(r.answer)}”: trajectory {r.index + 1} — not an answer to the question (it did not "
              "vote)" for r in unusable]
    if silent:
        lines.append(f"- No answer: {_trajectories(silent)}")
    lines += [f"- No answer: trajectory {r.index + 1} failed ({_quoted(r.error)})" for r in failed]
    if on_pages:
        how = ("by its words, then by the model weighing each sentence against its negation and with its numbers or "
               "names swapped" if model_checked else "by words, not meaning")
        lines.append(f"\n_\"On [n]\": a fetched page holds the answer's words (checked as the findings are: {how})._")
    return "\n".join(lines)


def _cites(decided: Vote, results: Sequence[TrajectoryResult], union: Sequence[Source]) -> dict[str, str]:
    """Answer → '; cited [1][3]', the sources its trajectories cited (each fetched by the trajectory citing it)."""
    number_of_url, by_index = source_numbers(union), {r.index: r for r in results}
    cites = {}
    for group in decided.groups:
        numbers = dict.fromkeys(number_of_url[key] for i in group.members for s in by_index[i].cited
                                if (key := source_key(s.url)) in number_of_url)
        if numbers:
            cites[group.answer] = "; cited " + "".join(f"[{n}]" for n in numbers)
    return cites


def _trajectories(numbers: Sequence[int]) -> str:
    return ("trajectory " if len(numbers) == 1 else "trajectories ") + ", ".join(map(str, numbers))


def _quoted(answer: str) -> str:
    """An answer as the disagreement list shows it: one line, no URLs (its sources are listed apart), at most
    QUOTED_ANSWER_WORDS words."""
    words = URL.sub("", answer).split()
    return as_text(" ".join(words[:QUOTED_ANSWER_WORDS])) + (" …" if len(words) > QUOTED_ANSWER_WORDS else "")
