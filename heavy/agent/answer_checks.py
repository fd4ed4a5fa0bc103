"""Whether what a trajectory's model wrote is an answer to keep, by what the trajectory asked and did so far: not
our own words copied back, not a page's title to a how or why question (steps.py holds the checks on text alone)."""

from __future__ import annotations

from collections.abc import Sequence

from heavy.agent import prompts
from heavy.agent.steps import (
    ActionStep,
    copies_text,
    only_a_title,
    restates_question,
    says_a_plan,
    says_nothing_found,
)
from heavy.tools.base import Source


class AnswerChecks:
    def __init__(self, question: str, tools: list[dict]) -> None:
        self.question = question
        functions = [spec["function"] for spec in tools]
        # what we wrote that a model may copy into its answer: the instructions and the tools' descriptions
        self.our_texts = [prompts.SYSTEM, *(f.get("description", "") for f in functions),
                          *(p.get("description", "") for f in functions
                            for p in f["parameters"]["properties"].values())]

    def only_a_title(self, answer: str, evidence: dict[str, Source]) -> bool:
        """Whether the answer to a how or why question is only the title of a page the trajectory found."""
        return only_a_title(answer, self.question, (s.title for s in evidence.values()))

    def copies_our_words(self, answer: str, steps: Sequence[ActionStep]) -> bool:
        """Whether the answer is text we wrote, copied back: our instructions, or (three words or more of) a tool's
        error or our feedback (seen on HotpotQA: "This run may open only its own corpus pages.", from a refused
        fetch)."""
        ours = [step.feedback for step in steps] + [o.text for step in steps for o in step.observations
                                                    if o.error or o.repeated]
        return prompts.copies_instructions(answer) or copies_text(answer, ours)

    def says_no_answer(self, text: str, steps: Sequence[ActionStep], evidence: dict[str, Source]) -> bool:
        """Whether a step's text or a forced answer is no answer to keep: empty, the question restated, "nothing
        found", a plan, our words copied back, or a page's title to a how or why question. (An `answer` call is
        checked in `Trajectory._accept_answer`, which tells the model which of these it was.)"""
        return (not text or restates_question(text, self.question) or says_nothing_found(text)
                or says_a_plan(text) or self.copies_our_words(text, steps) or self.only_a_title(text, evidence))
