"""A thinking model served without a reasoning parser writes its reasoning into the content: "<think>...</think>"
first, or (its chat template opened the block in the prompt) only the closing tag after it. These split it off, for
a whole reply (`split_reasoning`) and for a streamed one (`ThinkSplitter`: the leading-block form only, since without
an opening tag no delta could be shown before the closing one came or the stream ended)."""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
# A leading block, closed or not (the token cap may cut a thought), or text up to a closing tag with no opening tag
# before it (an answer that quotes the tags is not reasoning).
_THINK = re.compile(r"\A\s*(?:<think>(?P<block>.*?)(?:</think>|\Z)|(?P<opened>(?:(?!<think>).)*?)</think>)\s*",
                    re.DOTALL)


def split_reasoning(content: str) -> tuple[str, str]:
    """(content, reasoning) of a whole reply whose server sent no reasoning field; a block never closed is all
    reasoning, as ThinkSplitter.finish has it."""
    think = _THINK.match(content)
    if think is None:
        return content, ""
    reasoning = think["block"] if think["block"] is not None else think["opened"]
    return content[think.end():], reasoning.strip()


class ThinkSplitter:
    """Feed a stream's content deltas; get (content, reasoning) for each. Text that may still be the start of a tag
    is held back until the next delta (or `finish`) decides it."""

    def __init__(self) -> None:
        self.state = "start"  # start: nothing but whitespace yet | thinking: inside the block | content: after it
        self.held = ""
        self.after_block = False  # the whitespace that follows the block is dropped, as split_reasoning drops it

    def server_splits(self) -> None:
        """The server sends reasoning in its own field: its content is the answer as is."""
        if self.state == "start" and not self.held:
            self.state = "content"

    def feed(self, text: str) -> tuple[str, str]:
        if self.state == "content":
            return self._answer(text), ""
        self.held += text
        if self.state == "start":
            stripped = self.held.lstrip()
            if OPEN.startswith(stripped):  # whitespace, or part of the opening tag: not decided yet
                return "", ""
            if not stripped.startswith(OPEN):
                return self._to_content()
            self.state, self.held = "thinking", stripped[len(OPEN):]
        end = self.held.find(CLOSE)
        if end >= 0:
            reasoning, rest = self.held[:end], self.held[end + len(CLOSE):]
            self.state, self.held, self.after_block = "content", "", True
            return self._answer(rest), reasoning
        keep = next((n for n in range(min(len(CLOSE) - 1, len(self.held)), 0, -1)
                     if CLOSE.startswith(self.held[-n:])), 0)  # a tail that may begin the closing tag
        reasoning, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        return "", reasoning

    def finish(self) -> tuple[str, str]:
        """What is still held when the choice ends: a block never closed is reasoning."""
        if self.state == "thinking":
            reasoning, self.held = self.held, ""
            return "", reasoning
        return self._to_content()

    def _answer(self, text: str) -> str:
        if self.after_block:
            text = text.lstrip()
            self.after_block = not text
        return text

    def _to_content(self) -> tuple[str, str]:
        text, self.held, self.state = self.held, "", "content"
        return text, ""
