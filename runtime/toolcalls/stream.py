"""Streaming machinery shared by the tool-call parsers.

A parser is fed text deltas and returns `ParsedOutput` deltas; `finish()` flushes what was held back. The deltas of
any split of a text concatenate to the same result, so the one-shot parse is `feed(text) + finish()`. Text that may
be the beginning of a marker is held back until the next delta decides it, so markup never leaks into content.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from enum import Enum

from runtime.toolcalls.types import ParsedOutput, ToolCall

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def partial_marker_len(text: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


class _Phase(Enum):
    START = "start"  # nothing decided yet: a leading <think> may still come
    REASONING = "reasoning"
    CONTENT = "content"


class StreamingParser(ABC):
    """Splits a leading `<think>…</think>` into reasoning; subclasses parse the content after it."""

    def __init__(self) -> None:
        self._buf = ""
        self._phase = _Phase.START
        self._skip_leading_space = False  # the whitespace after </think> is not content
        self._finished = False
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCall] = []
        self._n_calls = 0

    def feed(self, delta: str) -> ParsedOutput:
        """Consume one text delta; return what it completed."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += delta
        self._drain(final=False)
        return self._take()

    def finish(self) -> ParsedOutput:
        """End of the text: flush everything held back (raises ToolCallParseError on a broken call)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._drain(final=True)
        return self._take()

    def parse(self, text: str) -> ParsedOutput:
        """One-shot parse of a whole completion."""
        return self.feed(text) + self.finish()

    # -- for subclasses -------------------------------------------------------------------------------------------

    @abstractmethod
    def _step_content(self, final: bool) -> bool:
        """Consume what it can of `self._buf` in the content phase; True if another step may make progress."""

    def _emit_content(self, text: str) -> None:
        if text:
            self._content.append(text)

    def _emit_call(self, call: ToolCall) -> None:
        self._calls.append(call)
        self._n_calls += 1

    def _emit_until_marker(self, markers: tuple[str, ...], final: bool) -> None:
        """Emit the whole buffer as content except a tail that may be the start of one of `markers`."""
        keep = 0 if final else partial_marker_len(self._buf, markers)
        self._emit_content(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]

    # -- internals ------------------------------------------------------------------------------------------------

    def _drain(self, final: bool) -> None:
        while self._step(final):
            pass

    def _step(self, final: bool) -> bool:
        if self._phase is _Phase.START:
            head = self._buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf = head[len(THINK_OPEN) :]
                self._phase = _Phase.REASONING
                return True
            if not final and THINK_OPEN.startswith(head):
                return False
            self._phase = _Phase.CONTENT
            return True
        if self._phase is _Phase.REASONING:
            end = self._buf.find(THINK_CLOSE)
            if end < 0:
                keep = 0 if final else partial_marker_len(self._buf, (THINK_CLOSE,))
                if len(self._buf) > keep:
                    self._reasoning.append(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return False
            if end:
                self._reasoning.append(self._buf[:end])
            self._buf = self._buf[end + len(THINK_CLOSE) :]
            self._phase = _Phase.CONTENT
            self._skip_leading_space = True
            return True
        if self._skip_leading_space:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._skip_leading_space = False
        return self._step_content(final)

    def _take(self) -> ParsedOutput:
        out = ParsedOutput("".join(self._content), tuple(self._calls), "".join(self._reasoning))
        self._content, self._calls, self._reasoning = [], [], []
        return out


class ReasoningParser(StreamingParser):
    """Splits off the reasoning only: the content is the text as the model wrote it, call-shaped or not (a request
    with no tools to call, or tool_choice "none")."""

    def _step_content(self, final: bool) -> bool:
        self._emit_content(self._buf)
        self._buf = ""
        return False
