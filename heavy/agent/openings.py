"""Where each trajectory starts: every one searches the question as asked; trajectory k ≥ 1 also searches one part
of it (a quoted title, a capitalised name, or one clause of a question that asks several things), a different part
per trajectory.

Measured on the HotpotQA eval: the eight trajectories of a weak model all read the same first results and rarely
search again, so eight gathered hardly more pages than one (6.1 against 5.2 per question). Searching the question's
named parts separately reaches pages a search of the whole question ranks low: the second entity of a comparison,
the film a person is named by. No model call is spent on it, and trajectory 0 starts exactly as a lone trajectory.
A question of several clauses ("what do break and continue do in a loop, and how does the else clause interact with
break?") has its clauses searched too: in the demo its only name, "Python", was the focus of every trajectory and led
three of four to pages on exceptions and literals.
"""

from __future__ import annotations

import re

# Capitalised words that start a question or a clause rather than a name.
_NOT_NAMES = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "what", "which", "who", "whom", "whose", "when", "where",
    "why", "how", "is", "are", "was", "were", "do", "does", "did", "has", "have", "had", "can", "could", "would",
    "will", "should", "in", "on", "of", "at", "by", "for", "to", "from", "and", "or", "but", "both", "either",
    "neither", "name",
})
# Lower-case words inside a name: "Lord of the Rings", "Letters to Cleo".
_JOINERS = frozenset({"of", "the", "and", "to", "on", "in", "de", "la", "le", "von", "van", "&", "for"})
_CLAUSE_BREAK = re.compile(r"[,;:]|\s(?=(?:and|but|or)\s+(?:how|what|when|where|why|which|who|whether)\b)",
                           re.IGNORECASE)
CLAUSE_MIN_WORDS = 3  # lower-case content words that make a clause worth its own search
_QUOTED = re.compile(r"[\"“]([^\"”]{2,80})[\"”]")
_TOKEN = re.compile(r"[\w'’.&-]+|[^\w\s]")


def named_parts(question: str) -> list[str]:
    """The question's quoted titles and runs of capitalised words, without repeats; a run joined by "and" ("Scott
    Derrickson and Ed Wood") also gives each side on its own. Names of several words come first: a single
    capitalised word is as often a nationality ("American") as a name. Bare numbers are left out."""
    parts = [m.strip() for m in _QUOTED.findall(question)]
    run: list[str] = []

    def close_run() -> None:
        while run and run[-1].lower() in _JOINERS:
            run.pop()
        while run and run[0].lower() in _NOT_NAMES:
            run.pop(0)
        if run:
            name = " ".join(run)
            parts.append(name)
            if " and " in name:
                parts.extend(side for side in name.split(" and ") if side)
        run.clear()

    for token in _TOKEN.findall(_QUOTED.sub(" , ", question)):
        if token[0].isupper() or token[0].isdigit() or (run and token.lower() in _JOINERS):
            run.append(token)
        else:  # a lower-case word or punctuation ends the run
            close_run()
    close_run()
    unique: list[str] = []
    for part in parts:
        part = part.strip(" .,'’")
        if (any(ch.isupper() for ch in part) and part.lower() not in _NOT_NAMES and part not in unique
                and part.lower() != question.strip(" ?").lower()):  # the opening search already ran it
            unique.append(part)
    return sorted(unique, key=lambda part: " " not in part)  # stable: in question order within each kind


def clauses(question: str) -> list[str]:
    """The clauses of a question that asks several things, each holding at least CLAUSE_MIN_WORDS lower-case content
    words (a clause made of names is already a named part); [] for a question of one clause."""
    found = []
    for piece in _CLAUSE_BREAK.split(question.strip(" ?")):
        words = piece.split()
        while words and words[0].lower() in ("and", "but", "or"):
            words.pop(0)
        content = [w for w in words if w[0].islower() and w.lower() not in _NOT_NAMES | _JOINERS and len(w) > 2]
        if len(content) >= CLAUSE_MIN_WORDS:
            found.append(" ".join(words))
    return found if len(found) > 1 else []


def focus_parts(question: str) -> list[str]:
    """What trajectories k ≥ 1 search besides the question, in turn: names of several words, then clauses, then
    single-word names."""
    names = named_parts(question)
    return [p for p in names if " " in p] + clauses(question) + [p for p in names if " " not in p]


def focus_query(question: str, index: int) -> str | None:
    """The second opening search of trajectory `index` (None for trajectory 0, or a question with no part to search)."""
    parts = focus_parts(question)
    if index == 0 or not parts:
        return None
    return parts[(index - 1) % len(parts)]
