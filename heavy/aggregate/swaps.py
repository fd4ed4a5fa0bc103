"""A claim with one of its numbers or names swapped for another the passage holds: rivals the claim is weighed against.

A negation cannot expose a right fact given to the wrong thing ("finished in 1887" of a page saying "begun in 1887,
finished in 1889"): "not finished in 1887" is no better supported. The same claim with 1889 in place of 1887 is, so
the model's share of "yes" for the swapped claim beats the claim's own when the claim took the wrong number.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"(?<![\w.])\d(?:[\d,]*\d)?(?:\.\d+)?(?!\w)")
# runs of capitalised words, allowing short joining words inside ("Tunnels and Trolls", "Duke of York")
NAME = re.compile(r"\b[A-Z][\w'’-]*(?:\s+(?:(?:of|the|and|de|du|la|von|van|der)\s+)*[A-Z][\w'’-]*)*")
SWAPS_PER_CLAIM = 2
_OPENING = re.compile(r"^(?:(?:The|A|An|In|On|At|By|For|From|With|As|After|Before|When|If|It|Its|This|That|These|"
                      r"Those|He|She|They|His|Her|Their)\s+)+")


def _names(text: str) -> list[str]:
    """Name runs, without a lone capitalised word that opens a sentence (most are no names: "The", "It", "In")."""
    found = []
    for match in NAME.finditer(text):
        before = text[:match.start()].rstrip()
        opens_sentence = not before or before[-1] in ".!?:\"'“"
        if opens_sentence and " " not in match.group():
            continue
        name = re.sub(r"['’]s$", "", match.group())  # "Eiffel's" is Eiffel
        found.append(_OPENING.sub("", name))  # "The Eiffel Tower", "In Lyon" opening a sentence
    return found


def swapped(claim: str, passage: str, limit: int = SWAPS_PER_CLAIM) -> tuple[str, ...]:
    """Up to `limit` copies of `claim`, each with one number (first) or name replaced by another of the passage's
    that the claim does not hold, in the order the passage gives them."""
    rivals: list[str] = []
    for finder in (NUMBER.findall, _names):
        held = finder(claim)
        # each once, in the passage's order; "Tower" is no rival to "Eiffel Tower", nor one the claim holds
        others = [o for o in dict.fromkeys(finder(passage)) if not any(o in h or h in o for h in held)]
        for item in held:
            for other in others:
                if len(rivals) == limit:
                    return tuple(rivals)
                rival = re.sub(rf"(?<!\w){re.escape(item)}(?!\w)", other, claim, count=1)
                if rival != claim and rival not in rivals:
                    rivals.append(rival)
    return tuple(rivals)
