"""Can a model check a report's claim against its cited passage? A probe before building a model check of claims.

The report keeps a claim when one passage of a cited page holds its words (`heavy/aggregate/citations.py`). That
cannot tell "a break skips the else clause" from the demo's wrong "break does not affect the else clause" when the
page holds the words of both. A model that reads the passage could, if it is good enough: this probe asks it, for
pairs whose truth is known, whether the passage supports the claim, in two wordings, greedy, and prints how many it
got right and how long a check took.

    .venv/bin/python scripts/probe_claim_check.py              # the embedded model
    HEAVY_BACKEND=openai HEAVY_OPENAI_BASE_URL=... .venv/bin/python scripts/probe_claim_check.py

The pairs: the wrong claims are the demo's errors about break/continue/else; the passages are the Python
reference's own sentences on loops (and one on the Eiffel Tower, for a claim that is not about code).
"""

from __future__ import annotations

import asyncio
import time

from heavy.config import get_settings
from heavy.llm import make_backend
from heavy.llm.types import Sampling

BREAK = ("break may only occur syntactically nested in a for or while loop, but not nested in a function or class "
         "definition within that loop. It terminates the nearest enclosing loop, skipping the optional else clause "
         "if the loop has one.")
FOR = ("A break statement executed in the first suite terminates the loop without executing the else clause's "
       "suite. A continue statement executed in the first suite skips the rest of the suite and continues with the "
       "next item, or with the else clause if there is no next item.")
EIFFEL = "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair."
# (passage, claim, whether the passage supports it)
PAIRS = [
    (BREAK, "The break statement in a for or while loop does not affect the else clause of a loop.", False),
    (FOR, "The break and continue statements do not affect the else clause of a loop.", False),
    (FOR, "The else clause of a loop terminates the loop without executing the break statement.", False),
    (FOR, "The else clause is executed when a break ends the loop.", False),
    (EIFFEL, "The tower was finished in 1901.", False),
    (BREAK, "The break statement terminates the nearest enclosing loop, skipping the optional else clause if the "
            "loop has one.", True),
    (FOR, "A continue statement skips the rest of the suite and continues with the next item.", True),
    (FOR, "The else clause is not executed when a break ends the loop.", True),
    (EIFFEL, "The tower was finished in 1889.", True),
    (BREAK, "A break ends the innermost loop and its else clause does not run.", True),
]
WORDINGS = {
    "supports (yes/no)": ("Passage: {passage}\n\nClaim: {claim}\n\nDoes the passage support the claim? "
                          "Answer yes or no.", ("yes",)),
    "true or false": ("Passage: {passage}\n\nStatement: {claim}\n\nAccording to the passage, is the statement true "
                      "or false? Answer with one word: true or false.", ("true",)),
}


async def probe() -> None:
    settings = get_settings()
    backend = make_backend(settings, settings.backend)
    try:
        for name, (template, accepting) in WORDINGS.items():
            right, started = 0, time.monotonic()
            for passage, claim, supported in PAIRS:
                prompt = template.format(passage=passage, claim=claim)
                reply = await backend.chat([{"role": "user", "content": prompt}], None, Sampling(temperature=0.0),
                                           max_tokens=4, request_id="probe", prefix_key="probe")
                said = reply.content.strip().lower()
                right += said.startswith(accepting) == supported
                print(f"{name:18} supported={supported!s:5} said={said!r:10} {claim[:64]}")
            seconds = (time.monotonic() - started) / len(PAIRS)
            print(f"== {name}: {right}/{len(PAIRS)} right, {seconds:.1f} s a check\n")
    finally:
        await backend.aclose()


if __name__ == "__main__":
    asyncio.run(probe())
