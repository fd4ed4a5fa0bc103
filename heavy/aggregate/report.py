"""Merge N trajectory results into one JobResult: vote on the answer, then (report mode) one LLM pass writes
the Markdown body, whose claims are filtered against the union of fetched sources."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from heavy.agent.steps import TrajectoryResult, finished_part
from heavy.aggregate.answer_list import answer_list, answers_on_pages, in_own_words
from heavy.aggregate.citations import FilteredReport, filter_claims
from heavy.aggregate.claim_check import check_answers, check_claims
from heavy.aggregate.config import AggregationConfig
from heavy.aggregate.evidence import (
    SENTENCE_END,
    best_sentences,
    fetched_texts,
    question_weights,
    topic_words,
    weigh,
)
from heavy.aggregate.markers import as_text, cited_numbers, link_target, link_text, renumber
from heavy.aggregate.quotes import answer_sentence, pick_quotes
from heavy.aggregate.result import JobResult
from heavy.aggregate.sources import source_key, source_numbers, union_of_sources
from heavy.aggregate.vote import Vote, vote
from heavy.llm.adjusted import with_reasoning_room
from heavy.llm.types import LLMBackend, LLMError, Usage
from heavy.tools.base import Source

log = logging.getLogger(__name__)

KEY_SENTENCES = 6  # quoted when no claim of the report pass stands
QUOTES_BESIDE_FINDINGS = 3  # quoted after the findings: the pages' own words, which a word check cannot get wrong
QUOTES_LEAD = "From the fetched pages, word for word:"
FALLBACK_LEAD = "The report pass wrote no claim a fetched page supports; the most relevant passages found:"
FAILED_LEAD = "The report pass failed (see above); the most relevant passages the trajectories fetched:"
REPORT_REQUEST = "report"  # the report pass's request id

REPORT_PROMPT = """Source texts:
{sources}

Question: {question}

What {n} independent researchers answered:
{findings}

Answer the question in a short report of 3 to 6 sentences, in your own words, using only facts from the source \
texts. End each sentence with the number of the source text that supports it, like this: "{example}" If the \
researchers disagree, say so and cite each side. Do not list the sources and do not repeat the question."""


async def aggregate(
    *,
    job_id: str,
    question: str,
    mode: str,
    results: Sequence[TrajectoryResult],
    backend: LLMBackend | None,
    status: str = "done",
    stop_reason: str = "all_done",
    config: AggregationConfig = AggregationConfig(),
) -> JobResult:
    results = sorted(results, key=lambda r: r.index)
    if backend is not None:
        backend = with_reasoning_room(backend, config.reasoning_tokens)
    # Short answers and the judge are for answer mode; a report's answer may need sentences, and the report pass
    # below is where its trajectories' findings are merged.
    fetched = fetched_texts(results)  # url → all the trajectories saw of it
    decided = await vote(question, results, backend if mode == "answer" else None, config.sampling, prefix_key=job_id,
                         min_majority=config.min_majority, read_on_majority=config.read_on_majority, fetched=fetched,
                         room=config.room)
    if mode == "report" and not _agreed(decided):  # one of several answers is no headline: the findings are
        decided = replace(decided, answer="", agreement=0.0, cited=())
    union = union_of_sources(results)
    usage = decided.usage
    body, dropped, refuted, report_error = "", (), (), ""
    weights = question_weights(question, list(fetched.values()))
    pages = _numbered_pages(union, fetched)
    texts = fetched if mode == "report" else {}  # answer mode lists no answers checked against the pages
    on_pages = answers_on_pages(question, decided, union, texts)
    checking = mode == "report" and backend is not None and config.check_claims
    weighed = False  # by the model, the answers' sentences: a model whose every check failed weighed none
    if checking:  # before the report pass, which is not shown answers no page supports
        on_pages, checked_usage, weighed = await check_answers(on_pages, union, texts, backend, config.sampling,
                                                               job_id, config.room)
        usage = usage + checked_usage
    stated = _answer_stated(question, decided, union, pages, weights) if decided.answer else None
    if mode == "report" and backend is not None and union:  # with no page to cite, no claim could stand
        unfounded = {i for g in decided.groups if g.answer in on_pages and not on_pages[g.answer].body
                     for i in g.members}
        written = await _write_body(question, results, union, (texts, weights, unfounded), backend, config, job_id)
        usage, report_error = usage + written.usage, written.failure
        filtered = filter_claims(written.body, union, texts, question)
        body, dropped = filtered.body, filtered.dropped
        if checking and body:
            checked = await check_claims(body, union, texts, backend, config.sampling, job_id, room=config.room)
            body, refuted = checked.body, checked.refuted
            dropped = (*dropped, *refuted)
            usage = usage + checked.usage
        # verbatim evidence beside the findings; in their stead when nothing the model wrote stands on a page
        quotes = _key_passages(question, pages, weights, QUOTES_BESIDE_FINDINGS if body else KEY_SENTENCES,
                               said=topic_words(f"{body} {stated[0] if stated else ''}"))
        if quotes:
            lead = QUOTES_LEAD if body else FAILED_LEAD if report_error else FALLBACK_LEAD
            body = f"{body}\n\n{lead}\n\n{quotes}".strip()
    markdown, numbers = _assemble(question, decided, results, union, (body, on_pages, stated), status,
                                  stop_reason, model_checked=weighed, report_error=report_error)
    total = usage + sum((r.usage for r in results), Usage())
    if report_error and status == "done":  # no findings: the report holds less than the job found
        status = "partial"
    return JobResult(
        job_id=job_id, question=question, mode=mode, status=status, answer=decided.answer,
        agreement=decided.agreement, markdown=markdown, sources=tuple(union[n - 1] for n in numbers),
        trajectories=tuple(results), usage=total, cost_usd=config.cost_usd(total), stop_reason=stop_reason,
        dropped_claims=dropped, refuted_claims=refuted, report_error=report_error,
        votes={g.answer: len(g.members) for g in decided.groups}, reads=decided.reads,
        more_reads=decided.more_reads,
    )


class WrittenBody(NamedTuple):
    body: str
    usage: Usage
    failure: str = ""  # why the pass wrote nothing to check ("" when it did): the report says so, and is partial


async def _write_body(question: str, results: Sequence[TrajectoryResult], union: Sequence[Source],
                      texts_weights_unfounded: tuple[dict[str, str], dict[str, float], set[int]],
                      backend: LLMBackend, config: AggregationConfig, job_id: str) -> WrittenBody:
    """The report pass. Answers no fetched page holds (`unfounded`: trajectory indices) are not shown to it: a small
    model copies the answers it is shown into the report (seen: "do not affect the else clause", on no page, written
    as findings twice), and the claim filter would drop them anyway."""
    texts, weights, unfounded = texts_weights_unfounded
    # The most relevant sources first, and only a few: a small model writes from the first sources it reads, and
    # eight trajectories fetch many off-topic pages (the demo's 15 sources held 3 on loops). Numbers stay the union's,
    # which the claim filter checks.
    shown = []
    for n, source in enumerate(union, start=1):
        excerpt = _excerpt(question, texts.get(source.url) or source.snippet, weights, config.source_excerpt_chars)
        relevance = weigh(source.title + " " + excerpt, weights)
        shown.append((relevance, n, excerpt, f"[{n}] {source.title}: {excerpt}"))  # no URL: a small model copies URLs
    # a page whose excerpt holds no word of the question is not shown while one that does is: the model copies what
    # it is shown (seen in the demo: "Can only be used inside a *coroutine function* [1]", the await page's excerpt,
    # as the one finding of a report on loops)
    shown = [item for item in shown if weigh(item[2], weights) > 0] or shown
    shown.sort(key=lambda item: -item[0])
    number_of_url = source_numbers(union)
    _, top, top_excerpt, _ = shown[0]

    def prompt_with(lines: list[str], listed: set[int]) -> str:
        return REPORT_PROMPT.format(question=question, sources="\n".join(lines), n=len(results),
                                    findings=_findings(results, unfounded, listed, number_of_url),
                                    example=_format_example(top, top_excerpt))

    # the sources take what the context leaves beside the rest of the prompt (its findings citing every source, and
    # a line break between sources), within prompt_source_chars; the question always stays
    rest = prompt_with([], {n for _, n, _, _ in shown})
    room = config.room.source_chars(config.report_tokens, rest) - config.report_sources
    lines, listed, budget = [], set(), min(config.prompt_source_chars, room)
    for _, n, _, entry in shown[: config.report_sources]:
        if len(entry) > budget:
            break
        lines.append(entry)
        listed.add(n)
        budget -= len(entry)
    prompt = prompt_with(lines, listed)
    try:
        completion = await backend.chat([{"role": "user", "content": prompt}], None, config.sampling,
                                        max_tokens=config.report_tokens, request_id=REPORT_REQUEST,
                                        prefix_key=job_id)
    except LLMError as exc:  # the vote and the sources still make a report
        log.warning("report pass failed: %s", exc)
        why = " ".join(str(exc).split()) or type(exc).__name__  # one line: the report quotes it
        return WrittenBody("", Usage(), f"its model request failed ({why})")
    body = completion.content
    if completion.finish_reason == "length":  # the token limit cut the last sentence: a fragment is no claim
        body = finished_part(body)
        if not body.strip():  # a thinking model may spend the whole limit reasoning
            return WrittenBody("", completion.usage,
                               f"its {config.report_tokens}-token limit cut it before it finished a sentence")
    elif not body.strip():  # not "no claim a fetched page supports": it wrote none at all
        return WrittenBody("", completion.usage, "the model's reply held no text")
    return WrittenBody(body, completion.usage)


def _findings(results: Sequence[TrajectoryResult], unfounded: set[int], listed: set[int],
              number_of_url: dict[str, int]) -> str:
    """What each trajectory answered, citing the listed sources among those it cited."""
    findings = []
    for r in results:
        answer = " ".join(r.answer.split())  # one line each: a copied page keeps its line breaks
        if r.index in unfounded:
            findings.append(f"- Researcher {r.index + 1} gave an answer that no source text holds.")
        elif r.answered:
            numbers = [number_of_url[source_key(s.url)] for s in r.cited]
            cites = ", ".join(f"[{n}]" for n in dict.fromkeys(numbers) if n in listed)
            findings.append(f"- Researcher {r.index + 1} answered: {answer} (confidence {r.confidence:.1f}), "
                            f"citing {cites or 'no source'}")
        else:
            findings.append(f"- Researcher {r.index + 1} found no answer ({r.stop_reason}).")
    return "\n".join(findings)


def _format_example(number: int, excerpt: str) -> str:
    """The citation format, shown on the first sentence of the most relevant source's excerpt: the embedded model
    copied a made-up example ("The tower was finished in 1889 [2].") into 22 of 31 HotpotQA reports, often as all it
    wrote; copied, this one is a true claim on its page (docs/report_claims.md)."""
    first = SENTENCE_END.split(excerpt.removeprefix("… "), maxsplit=1)[0].strip().rstrip(".")
    return f"{first} [{number}]."


def _excerpt(question: str, text: str, weights: dict[str, float], max_chars: int) -> str:
    """What the report prompt shows of a fetched text: its sentences richest in the question's rarer words, in
    the text's order, within `max_chars` (the page's start, often a title and a table of contents, says little);
    the start when no sentence shares a word with the question."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    return " … ".join(best_sentences(question, text, count=None, weights=weights, max_chars=max_chars)
                      ) or flat[:max_chars]


def _numbered_pages(union: Sequence[Source], texts: dict[str, str]) -> dict[int, tuple[str, str]]:
    """Source number → (title, text) of every fetched page: what the quotes are picked from."""
    number_of_url = source_numbers(union)
    return {(n := number_of_url[source_key(url)]): (union[n - 1].title, text) for url, text in texts.items()}


def _key_passages(question: str, pages: dict[int, tuple[str, str]], weights: dict[str, float], count: int,
                  said: set[str] = frozenset()) -> str:
    """A Markdown list of up to `count` quotes of the fetched pages (quotes.py), cited."""
    picked = pick_quotes(question, pages, weights, count, said)
    return "\n".join(f"- “{as_text(sentence)}” [{n}]" for sentence, n in picked)


def _assemble(question: str, decided: Vote, results: Sequence[TrajectoryResult], union: Sequence[Source],
              body_and_answers: tuple[str, dict[str, FilteredReport], tuple[str, int] | None],
              status: str, stop_reason: str, model_checked: bool = False, report_error: str = ""
              ) -> tuple[str, list[int]]:
    """The whole Markdown, renumbered, and the union numbers of the sources it cites, in order."""
    body, on_pages, stated = body_and_answers
    number_of_url = source_numbers(union)
    answer_numbers = list(dict.fromkeys(number_of_url[key] for url in decided.cited
                                        if (key := source_key(url)) in number_of_url))
    parts = [f"# {as_text(' '.join(question.split()))}"]  # a heading is one line
    if status == "partial":
        parts.append(f"> Partial report ({stop_reason}): aggregated from the trajectories that had finished.")
    if report_error:
        parts.append("> Partial report: the report pass, which writes the findings, wrote none: "
                     f"{as_text(report_error)}. Below are the trajectories' answers and their fetched pages' own "
                     "sentences.")
    if decided.answer:
        marks = "".join(f"[{n}]" for n in answer_numbers)
        behind = (f"{len(decided.backers)} of {len(results)} trajectories gave this answer"
                  + ("; with no majority, the judge's readings of the fetched pages decided" if decided.judged else "")
                  if decided.backers else
                  f"No answer had a majority among the {len(results)} trajectories; the judge answered from the "
                  "pages they fetched")
        parts.append(f"**Answer:** {as_text(decided.answer)} {marks}".rstrip() + f"\n\n{behind}."
                     + (f" A fetched page says: “{as_text(stated[0])}” [{stated[1]}]" if stated else ""))
    elif decided.groups and in_own_words(decided):
        parts.append(f"**Answer:** no one answer: the {len(results)} trajectories answered in sentences of their own, "
                     "none given by a majority. The findings below merge what their fetched pages say; each "
                     "trajectory's answer is listed after them.")
    elif decided.groups:
        parts.append(f"**Answer:** the {len(results)} trajectories did not agree (no answer had a majority). The "
                     "findings below merge what their fetched pages say; their answers are listed after them.")
    else:
        parts.append("**Answer:** no trajectory found an answer it could support.")
    if body:
        parts.append("## Findings\n\n" + body)
    parts.append(answer_list(decided, results, on_pages, model_checked, cited_in=union if report_error else ()))
    # the sources are those the text cites, in order of first use: a page the answer list marks is listed only
    # when the list is shown
    text = "\n\n".join(p for p in parts if p)
    cited = [n for n in cited_numbers(text) if 1 <= n <= len(union)]
    markdown = renumber(text, cited)
    if cited:
        markdown += "\n\n## Sources\n\n" + "\n".join(
            f"{i}. [{link_text(union[n - 1].title or union[n - 1].url)}]({link_target(union[n - 1].url)}) — fetched "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(union[n - 1].fetched_at))}, "
            f"sha256 {union[n - 1].content_hash[:12]}"
            for i, n in enumerate(cited, start=1)
        )
    return markdown, cited


def _answer_stated(question: str, decided: Vote, union: Sequence[Source], pages: dict[int, tuple[str, str]],
                   weights: dict[str, float]) -> tuple[str, int] | None:
    """The fetched sentence that writes the answer out, and its source number: on the answer's own pages if one
    does, else on any fetched page (a judge's answer cites the pages it read)."""
    number_of_url = source_numbers(union)
    own = {number_of_url[key] for url in decided.cited if (key := source_key(url)) in number_of_url}
    return (answer_sentence(question, decided.answer, {n: page for n, page in pages.items() if n in own}, weights)
            or answer_sentence(question, decided.answer, pages, weights))


def _agreed(decided: Vote) -> bool:
    """More than half of the answering trajectories gave the vote's answer (a lone one counts)."""
    answered = sum(len(g.members) for g in decided.groups)
    return not decided.groups or 2 * len(decided.backers) > answered
