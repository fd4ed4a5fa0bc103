"""Questions that offer a choice ("Who is older, Annie Morton or Terry Richardson?"): the answer is one of the two
options, so a short answer that names exactly one of them votes for that option, written as the question writes it.

Seen at n=8 (HotpotQA question 38): "Scottish Collie" (3 trajectories) and "collie" (1) were two answers and lost to
"Manchester Terrier" (3), while the question offered "the Scotch Collie"; a lone "Erskine Barton Childers" stood
for the option "Robert Erskine Childers". A short answer naming both options ("Manchester Terrier or Scotch Collie",
seen beside them) chose neither and counts as no answer; a sentence, or an answer naming neither, is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from heavy.aggregate.evidence import content_words
from heavy.aggregate.shorten import JOINING, is_short

MAX_OPTION_WORDS = 6  # longer spans are clauses, not the names of options
_CLAUSE_END = re.compile(r"[,:;?!]")  # an option runs from the clause's punctuation to " or ", and on to the next
_OR = re.compile(r"\s+or\s+")
_LEADING_WORDS = re.compile(r"^(?:either\s+)?(?:(?:the|an?)\s+)?", re.IGNORECASE)


def offered_options(question: str) -> tuple[str, str] | None:
    """The two options the question offers between punctuation ("..., A or B?", "...: the A or the B?",
    "Which band, A or B, had ...?"), articles dropped; None when it offers none so delimited. A question with no
    punctuation before its "or" ("Is A or B older?") is not parsed: where A starts is a guess. After it, B runs to
    the next punctuation mark, less the lowercase words that follow a name ("..., Screaming Trees had more
    members?" offers "Screaming Trees"; "Letters to Cleo" keeps its "to")."""
    parts = _OR.split(question.strip())
    if len(parts) != 2:
        return None
    before, after = _CLAUSE_END.split(parts[0].rstrip(" ,;:")), _CLAUSE_END.split(parts[1])  # "A, or B"
    if len(before) < 2:
        return None
    options = (_LEADING_WORDS.sub("", before[-1].strip()), _name_only(_LEADING_WORDS.sub("", after[0].strip())))
    if any(not option or len(option.split()) > MAX_OPTION_WORDS for option in options):
        return None
    if not (_words(options[0]) - _words(options[1])) or not (_words(options[1]) - _words(options[0])):
        return None  # nothing tells them apart
    return options


def _name_only(option: str) -> str:
    """A capitalised option without the lowercase words after its last capitalised one (the rest of the clause)."""
    words = option.split()
    if not words or not words[0][:1].isupper():
        return option
    last = max(i for i, word in enumerate(words) if word[:1].isupper())
    return " ".join(words[: last + 1])


def chosen_option(answer: str, options: tuple[str, str]) -> str | None:
    """The option a short answer names by a word of its own ("collie" names "Scotch Collie", not "Manchester
    Terrier"); "" when it names both (it restates the choice: no answer), None when it names neither or is not
    short (a sentence naming one option may still say the other is the answer)."""
    if not is_short(answer):
        return None
    said = _words(answer)
    first, second = _words(options[0]), _words(options[1])
    named = [option for option, own in ((options[0], first - second), (options[1], second - first)) if said & own]
    if len(named) == 2:
        return ""
    return named[0] if named else None


def as_options(question: str, answers: Mapping[int, str]) -> dict[int, str]:
    """Trajectory index → its answer, each short answer naming one offered option replaced by that option, and one
    naming both by no answer ("")."""
    return {i: as_option(question, answer) for i, answer in answers.items()}


def as_option(question: str, answer: str) -> str:
    """The offered option the answer names ("" for both), else the answer."""
    options = offered_options(question)
    chosen = chosen_option(answer, options) if options else None
    return answer if chosen is None else chosen


def _words(text: str) -> set[str]:
    return content_words(text) - JOINING
