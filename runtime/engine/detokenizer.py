"""Completion text, token by token, with stop strings.

The tokenizer's incremental decoder already holds back a character split across tokens; on top of it, the end of
the text that may be the start of a stop string is held back until resolved, so a streamed delta is never taken back.
"""

from typing import Protocol


class IncrementalDecoder(Protocol):
    def push(self, token_id: int) -> str: ...

    def finish(self) -> str: ...


class StopStringText:
    def __init__(self, decoder: IncrementalDecoder, stop: tuple[str, ...] = ()):
        self._decoder = decoder
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._fallback = [_prefix_function(s) for s in stop]
        self._matched = [0] * len(stop)  # per stop: the longest end of `text` that is a proper prefix of it
        self.text = ""  # decoded so far, cut at a stop string once one appears
        self.emitted = 0  # characters of `text` already returned as deltas
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Decode one token; sets `stopped` and cuts `text` at the first stop string."""
        self._extend(self._decoder.push(token_id))

    def delta(self, final: bool) -> str:
        """Text not yet returned; unless final, without a tail that could still become a stop string."""
        if final and not self.stopped:
            self._extend(self._decoder.finish())
        end = len(self.text) if final or self.stopped else len(self.text) - self._stop_prefix_len()
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def _extend(self, new_text: str) -> None:
        if not new_text or self.stopped:
            return
        search_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += new_text
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return
        self._matched = [_advance(stop, fallback, matched, new_text)
                         for stop, fallback, matched in zip(self._stop, self._fallback, self._matched, strict=True)]

    def _stop_prefix_len(self) -> int:
        """Length of the longest end of `text` that is a proper prefix of a stop string."""
        return max(self._matched, default=0)


def _prefix_function(stop: str) -> list[int]:
    """KMP's table: [i] is the length of the longest proper prefix of stop[: i + 1] that also ends it."""
    fallback = [0] * len(stop)
    for i in range(1, len(stop)):
        k = fallback[i - 1]
        while k and stop[i] != stop[k]:
            k = fallback[k - 1]
        fallback[i] = k + (stop[i] == stop[k])
    return fallback


def _advance(stop: str, fallback: list[int], matched: int, new_text: str) -> int:
    """The longest end of text + new_text that is a proper prefix of stop, from `matched`, that of text: amortised
    O(len(new_text)), where comparing every end of the text with the stop is O(len(stop) ** 2) a call. new_text holds
    no end of a whole stop string (_extend stops there), so `matched` stays below len(stop)."""
    window = len(stop) - 1  # a proper prefix of stop at the end of the text lies within its last `window` chars
    if len(new_text) >= window:
        matched, new_text = 0, new_text[len(new_text) - window:]
    for char in new_text:
        while matched and stop[matched] != char:
            matched = fallback[matched - 1]
        matched += stop[matched] == char
    return matched
