"""Streamed completion text: stop strings are cut and never half-streamed; deltas concatenate to the final text."""

import random

import pytest

from runtime.engine.detokenizer import StopStringText


class Chars:
    """A decoder whose token i decodes to pieces[i]: a fixed text's i-th character, or the i-th of a list of
    strings."""

    def __init__(self, pieces: str | list[str]):
        self.text = pieces

    def push(self, token_id: int) -> str:
        return self.text[token_id]

    def finish(self) -> str:
        return ""


def stream(pieces: str | list[str], stop: tuple[str, ...]) -> tuple[list[str], StopStringText]:
    out = StopStringText(Chars(pieces), stop)
    deltas = []
    for i in range(len(pieces)):
        out.add(i)
        deltas.append(out.delta(final=out.stopped))
        if out.stopped:
            break
    else:
        deltas.append(out.delta(final=True))
    return deltas, out


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("hello world. bye", ("world",), "hello "),
        ("a<b<end>c", ("<end>",), "a<b"),
        ("no stop here", ("zzz",), "no stop here"),
        ("xyz", (), "xyz"),
        ("abcSTOPdef", ("cSTOP", "STOPd"), "ab"),  # the earliest occurrence wins
    ],
)
def test_text_is_cut_before_the_first_stop_string(text, stop, expected):
    deltas, out = stream(text, stop)
    assert "".join(deltas) == expected == out.text
    assert out.stopped == (expected != text)


def test_a_possible_stop_prefix_is_held_back_then_released():
    out = StopStringText(Chars("ab<en<x"), ("<end>",))
    got = []
    for i in range(5):
        out.add(i)
        got.append(out.delta(final=False))
    assert got == ["a", "b", "", "", ""]  # "<", "<e", "<en" may still become "<end>"
    out.add(5)
    assert out.delta(final=False) == "<en"  # "<en<" cannot become "<end>"; the last "<" still may
    out.add(6)
    assert out.delta(final=False) == "<x" and out.text == "ab<en<x" and not out.stopped


def held_back_plainly(text: str, stop: tuple[str, ...]) -> int:
    """The longest end of text that is a proper prefix of a stop string, every end compared with every stop."""
    ends = [n for n in range(1, len(text) + 1) for s in stop if n < len(s) and s.startswith(text[-n:])]
    return max(ends, default=0)


def deltas_plainly(chunks: list[str], stop: tuple[str, ...]) -> list[str]:
    text, emitted, deltas = "", 0, []
    for chunk in chunks:
        text += chunk
        if hits := [i for i in (text.find(s) for s in stop) if i >= 0]:
            return [*deltas, text[emitted: min(hits)]]
        end = max(len(text) - held_back_plainly(text, stop), emitted)
        deltas.append(text[emitted:end])
        emitted = end
    return [*deltas, text[emitted:]]


def test_deltas_hold_back_what_comparing_every_end_with_every_stop_holds_back():
    """Over few letters, so that stop strings overlap themselves, each other and the text in many ways; the text
    arrives in chunks of 1-4 characters, as tokens decode."""
    rng = random.Random(0)
    for _ in range(2000):
        alphabet = "ab" if rng.random() < 0.5 else "abc"
        stop = tuple("".join(rng.choices(alphabet, k=rng.randint(1, 7))) for _ in range(rng.randint(1, 4)))
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if text else []
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        deltas, _ = stream(chunks, stop)
        assert deltas == deltas_plainly(chunks, stop), (chunks, stop)
