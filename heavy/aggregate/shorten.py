"""Short answers for the vote: a weak model often answers with a sentence ("The band was formed in 1994 in
Leeds."), and sentences that say the same thing never compare equal. Long answers are cut down to the phrase that
answers the question by one small LLM call each, run concurrently; short ones are kept as written, and "Yes, ..." to a
yes/no question needs no model to become "yes". A sentence the model gives back uncut that only restates the question
around one phrase is cut to that phrase by rule."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence

from heavy.agent.steps import (
    TrajectoryResult,
    answer_line,
    only_a_title,
    only_printed,
    printed_output,
)
from heavy.aggregate.evidence import content_words, written_words
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.normalize import normalize_answer, plain_answer
from heavy.llm.types import LLMBackend, LLMError, Message, Sampling, Usage

log = logging.getLogger(__name__)

SHORT_WORDS = 5  # answers up to this many words are already short
SHORTEN_TOKENS = 24

SHORTEN_SYSTEM = ("You shorten answers. Reply with only the few words that answer the question: a name, a place, "
                  "a date, a number, or yes/no for a yes/no question.")
# A small model follows worked examples given as chat turns far better than rules alone: with rules only,
# Qwen2.5-0.5B echoes the sentence back; with examples written into one prompt it answers "yes" to everything.
EXAMPLES = (
    ("Who wrote the play Hamlet?",
     "The play Hamlet was written by the English playwright William Shakespeare around 1600.", "William Shakespeare"),
    ("Which city is larger, Lyon or Paris?",
     "Paris has about 2.1 million inhabitants while Lyon has about 500,000.", "Paris"),
    ("Were the Beatles and the Rolling Stones both from England?",
     "The Beatles came from Liverpool and the Rolling Stones from London, both in England.", "yes"),
    ("What job did the inventor of the telephone have before?",
     "Before inventing the telephone, Alexander Graham Bell worked as a teacher of the deaf.", "teacher of the deaf"),
)


def shorten_messages(question: str, answer: str, room: PromptRoom = PromptRoom()) -> list[Message]:
    """The examples, then the question and the answer, the answer cut to what the context leaves (a copied page)."""
    messages: list[Message] = [{"role": "system", "content": SHORTEN_SYSTEM}]
    for example_question, long_answer, short_answer in EXAMPLES:
        messages += [{"role": "user", "content": f"Question: {example_question}\nAnswer: {long_answer}"},
                     {"role": "assistant", "content": short_answer}]
    asked = f"Question: {question}\nAnswer: "
    rest = asked + "".join(m["content"] for m in messages)
    answer = room.fitted(" ".join(answer.split()), SHORTEN_TOKENS, rest, messages=len(messages) + 1)
    return messages + [{"role": "user", "content": asked + answer}]


# A question opening with an auxiliary verb asks for yes or no ("Were X and Y both ...?") unless it offers a choice
# ("Was X or Y born first?"); others never do.
_AUXILIARIES = frozenset({
    "is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "will", "would", "shall", "should", "may",
    "might", "must", "has", "have", "had",
})
YES_NO = ("yes", "no")
_ASKS_NUMBER = frozenset({("how", "many"), ("how", "much"), ("how", "old"), ("what", "year"), ("which", "year"),
                          ("what", "years"), ("what", "date"), ("what", "decade"), ("what", "century")})
_NUMBER_WORDS = frozenset({
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty",
    "thirty", "forty", "fifty", "hundred", "thousand", "million", "billion", "dozen",
})


def drawn_from(cut: str, answer: str) -> bool:
    """The short form says what the answer said: at least half its words are in the answer (or it is yes/no).
    Seen on the embedded model: a long answer it could not cut became an example's answer ("teacher of the
    deaf" for "... held a government position as a judge"), a vote that no trajectory cast."""
    words = content_words(cut)
    return normalize_answer(cut) in YES_NO or 2 * len(words & content_words(answer)) >= len(words)


def is_short(answer: str) -> bool:
    return written_words(answer) <= SHORT_WORDS


def asks_yes_no(question: str) -> bool:
    words = normalize_answer(question).split()
    return bool(words) and words[0] in _AUXILIARIES and not _offers_choice(words)


def asks_who(question: str) -> bool:
    """"Who ...?", "Whose ...?": the answer is a person (a relative "who" later in the question does not count)."""
    words = normalize_answer(question).split()
    return bool(words) and words[0] in ("who", "whom", "whose")


def _offers_choice(question_words: list[str]) -> bool:
    return "or" in question_words


def not_an_answer(question: str, answer: str) -> bool:
    """Of the wrong kind, or only the question restated: refused from the model (a cut or a judge's reading)."""
    return off_kind(question, answer) or restates(question, answer)


def asks_number(question: str) -> bool:
    """"How many ...?", "What year ...?", "When was ...?": the answer holds a number or a date."""
    words = normalize_answer(question).split()
    pairs = set(zip(words, words[1:], strict=False))
    return bool(words) and ("when" in (words[0], words[-1]) or bool(pairs & _ASKS_NUMBER))


def says_number(answer: str) -> bool:
    words = normalize_answer(answer).split()
    return any(c.isdigit() for c in answer) or any(w in _NUMBER_WORDS for w in words)


def off_kind(question: str, answer: str) -> bool:
    """An answer of the wrong kind: yes or no to a question that does not ask for one ("yes" never answers "Who
    ...?"), anything else to one that does (a name never answers "Were X and Y both ...?"), or no number to a
    question asking for one (seen: "Brown County" for "... a population of how many inhabitants?")."""
    return (normalize_answer(answer) in YES_NO) != asks_yes_no(question) or _lacks_number(question, answer)


def _lacks_number(question: str, answer: str) -> bool:
    return asks_number(question) and not says_number(answer)


def restates(question: str, answer: str) -> bool:
    """The answer only repeats the question's words: it names what is asked about, not what is asked for (seen:
    "Aladin" to "Who was known by his stage name Aladin ...?", from all eight readings of one job). A question
    that offers a choice ("Who is older, X or Y?") is answered in its own words. A word one letter longer or shorter
    than one of the question's is the question's word misspelt on one side (seen: "Livesey Hall War Memorial" read
    three times off "The Livesey Hal War Memorial commemorates the fallen of which war ...?")."""
    words, asked = content_words(answer), content_words(question)
    return (bool(words) and all(w in asked or _misspelt_in(w, asked) for w in words)
            and not _offers_choice(normalize_answer(question).split()))


def _misspelt_in(word: str, asked: set[str]) -> bool:
    """One letter more or less than a word of `asked` ("hall" and "hal"); never a number ("1992" is not "199")."""
    if any(c.isdigit() for c in word):
        return False
    for other in asked:
        if abs(len(other) - len(word)) == 1:
            short, long = sorted((word, other), key=len)
            if any(long[:i] + long[i + 1:] == short for i in range(len(long))):
                return True
    return False


def rule_based(question: str, answer: str, titles: Iterable[str] = (), printed: str = "") -> str | None:
    """The short form when no model is needed: "Yes, both were ..." to a yes/no question is "yes", a bare yes/no
    to any other question is no answer at all (""), and so is an answer of any length that restates the question
    (seen: two of eight trajectories answering with the question itself, which then led the vote), one that is
    only the title of a fetched page (`titles`) to a how or why question (seen in `heavy ask`: "Python reference:
    With Statement Context Managers", which its trajectory gave again when told it was a title), one that only says
    what its trajectory's python code `printed` (seen: "Hello, world!", given again when told so; the caller passes
    `printed` only for an answer no fetched page writes), or a short one with no number for a question asking for
    one."""
    words = normalize_answer(answer).split()
    if words and words[0] in YES_NO:
        if asks_yes_no(question):
            return words[0]
        if len(words) == 1:
            return ""
    if (restates(question, answer) or only_a_title(answer, question, titles)
            or (printed and only_printed(answer, printed, question))):
        return ""
    if not is_short(answer):
        return None
    return "" if _lacks_number(question, answer) else answer.strip()


def cut_by_rule(question: str, results: Sequence[TrajectoryResult]) -> tuple[dict[int, str], set[int]]:
    """Trajectory index → its answer (plain_answer) cut by rule where a rule applies (rule_based, against the titles
    of the pages the trajectories fetched and what each one's python code printed), and the indices none applied to
    (answers a model may still shorten)."""
    answers = {r.index: plain_answer(r.answer) for r in results}
    titles = {s.title for r in results for s in r.evidence}
    printed = {r.index: printed_output(o for step in r.steps for o in step.observations) for r in results}
    pages = [f" {normalize_answer(text)} " for r in results for text in r.excerpts.values()] if any(
        printed.values()) else []
    for i, answer in answers.items():  # a printed name that a page writes too came from the pages
        if printed[i] and any(f" {normalize_answer(answer)} " in page for page in pages):
            printed[i] = ""
    ruled = {i: rule_based(question, answer, titles, printed[i]) for i, answer in answers.items()}
    return ({i: answers[i] if cut is None else cut for i, cut in ruled.items()},
            {i for i, cut in ruled.items() if cut is None})


async def shorten_answers(question: str, results: Sequence[TrajectoryResult], backend: LLMBackend | None,
                          sampling: Sampling = Sampling(), prefix_key: str | None = None,
                          room: PromptRoom = PromptRoom()) -> tuple[dict[int, str], Usage]:
    """Trajectory index → the answer to vote with. Without a backend, or when a call fails, the answer stays.
    HTML entities are unescaped first: an answer copied from an escaped title ("Tunnels &amp; Trolls") is checked
    against the question as written plainly (seen: it restated the question, yet voted, as the entity hid it)."""
    plain = {r.index: plain_answer(r.answer) for r in results}
    short, uncut = cut_by_rule(question, results)
    long = [r for r in results if r.answered and r.index in uncut]
    if backend is None or not long:
        return short, Usage()

    usage = Usage()
    cuts = await asyncio.gather(*(shorten_one(question, plain[r.index], backend, sampling, prefix_key,
                                              f"shorten:{r.index}", room) for r in long))
    for result, (answer, used) in zip(long, cuts, strict=True):
        short[result.index] = answer
        usage = usage + used
    return short, usage


async def shorten_one(question: str, answer: str, backend: LLMBackend, sampling: Sampling, prefix_key: str | None,
                      request_id: str, room: PromptRoom = PromptRoom()) -> tuple[str, Usage]:
    """One long answer cut down by the model; the answer as written when the call fails or the cut is of the
    wrong kind or says something else. A cut still long is reduced to the phrase it adds to the question."""
    try:
        completion = await backend.chat(shorten_messages(question, answer, room), None, sampling,
                                        max_tokens=SHORTEN_TOKENS, request_id=request_id, prefix_key=prefix_key)
    except LLMError as exc:  # the long answer still votes
        log.warning("%s failed: %s", request_id, exc)
        return answer.strip(), Usage()
    cut = answer_line(completion.content)
    if not cut or not_an_answer(question, cut) or not drawn_from(cut, answer):
        cut = answer.strip()
    if not is_short(cut):  # seen: the sentence echoed back whole
        cut = phrase_around_question(question, cut) or cut
    return cut, completion.usage


# Words that join a phrase to the question restated around it ("It was 1887"); they belong to neither.
JOINING = frozenset({"the", "and", "was", "were", "are", "has", "had", "have", "been", "that", "which", "who",
                      "this", "its", "his", "her", "their", "for", "with", "from", "also", "one"})
_TOKEN_WORDS = re.compile(r"\w+")


def phrase_around_question(question: str, answer: str) -> str | None:
    """The one phrase a sentence adds to the question it restates, when the model could not cut it: "The English
    Electric Canberra was used in the South West Pacific theatre" to "Which ... bomber was used in the South West
    Pacific theatre ...?" is "English Electric Canberra" (seen: four of eight readings of one job, left as that
    sentence, won its vote). None unless the sentence holds words of the question and all its other words form one
    short run, and that run is an answer of the right kind."""
    asked = content_words(question)
    tokens = answer.split()
    kinds = [_token_kind(token, asked) for token in tokens]
    new = [i for i, kind in enumerate(kinds) if kind == "new"]
    if not new or "asked" not in kinds or "asked" in kinds[new[0]:new[-1] + 1]:
        return None
    phrase = " ".join(tokens[new[0]:new[-1] + 1]).strip(" ,;:.!?\"'()")
    if not is_short(phrase) or not_an_answer(question, phrase):
        return None
    return phrase


def says_more(answer: str, than: str, question: str) -> bool:
    """The answer holds a word that neither `than` nor the question holds, joining words aside: "Indianapolis Motor
    Speedway" says more than "Indianapolis", "It was 1887" no more than "1887"."""
    return bool(content_words(answer) - content_words(than) - content_words(question) - JOINING)


def _token_kind(token: str, asked: set[str]) -> str:
    """"asked" if the token holds a word of the question, "new" if it holds another word, else "joining"."""
    words = {w for w in _TOKEN_WORDS.findall(token.lower()) if len(w) > 2}
    if words & asked:
        return "asked"
    return "new" if words - JOINING else "joining"
