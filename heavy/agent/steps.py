"""What a trajectory did, as data: one `ActionStep` per model call, and the `TrajectoryResult` it ends with."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from heavy.llm.types import ToolCall, Usage
from heavy.tools.base import Source
from heavy.tools.python_exec import NO_OUTPUT

ANSWER_PREFIXES = ("final answer:", "answer:", "the answer is")
DEFAULT_CONFIDENCE = 0.6  # an answer call that states none, or an unreadable one
_WORD = re.compile(r"\w+")
# where a sentence ends: its full stop, then any citation markers and closing quotes ("… suite [1].", "… 1889. [2]")
_SENTENCE_CLOSE = re.compile(r"[.!?](?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])*[\"'’”)\]]*(?=\s|$)")
PYTHON_TOOL = "python"
FRAGMENT_WORDS = 3  # an unfinished tail this short, after finished sentences, is a stub and no part of the answer
MIN_KEPT_WORDS = 8  # a cut answer keeps its finished sentences only if they say this much ("in the U.S." does not)
# A tool result's header as the tools write it ("[n] Title" or "# Title", then "URL: ..."), copied into an answer.
# The line above "URL:" goes with it only if it reads as a title, not as a sentence (no closing full stop).
_RESULT_HEADER = re.compile(r"^(?:[^\n]{0,150}[^\s.!?:][ \t]*\n)?[ \t]*URL:[ \t]*\S+[^\n]*(?:\n|$)", re.MULTILINE)
# a chat-template tag the model wrote itself: what follows is a tool result it imagined, not its answer (seen with the
# 1.5B model: "<tool_response>\nResults for 'David Weissman': ..." taken as the answer)
_IMAGINED_RESULT = re.compile(r"<tool_response>|<\|im_start\|>")
# an answer written as the `answer` call's arguments, as text and often cut off: '{"answer": "Python reference: ...'
_JSON_ANSWER = re.compile(r'\s*\{\s*"answer"\s*:\s*"((?:[^"\\]|\\.)*)')


def without_result_headers(answer: str) -> str:
    """The answer without the title-and-URL headers of tool results a small model copies into it (seen in the demo:
    "Python reference: Compound statements\nURL: http://…/doc/22\n… A "break" statement …"); the URLs belong in
    the sources. An answer that is nothing but headers is left as it is. Nothing from a tool-result tag the model
    wrote itself on counts: it is a result the model imagined."""
    answer = _IMAGINED_RESULT.split(answer, maxsplit=1)[0]
    rest = _RESULT_HEADER.sub("", answer)
    if rest == answer:
        return answer.strip()
    rest = rest.strip().lstrip("….").strip()  # the "…" a search snippet starts with
    return rest if any(ch.isalnum() for ch in rest) else answer.strip()


def finished_part(text: str) -> str:
    """`text` up to the end of its last finished sentence (its citation markers and closing quotes included)."""
    ends = list(_SENTENCE_CLOSE.finditer(text))
    return text[:ends[-1].end()] if ends else ""


def without_cut_sentence(answer: str, cut: bool = True) -> str:
    """The answer without an unfinished last sentence: any, when the token limit cut the reply (`cut`); else only a
    stub of at most FRAGMENT_WORDS words, which a model copying a page's wrapped lines leaves when it stops at a line
    end (seen in the demo: '… without executing the "else" clause's suite. A "continue"'). An answer that ends like
    a sentence, or whose finished part would say too little, is kept whole: a short answer is more likely complete."""
    kept = finished_part(answer.rstrip())
    if kept == answer.rstrip() or len(kept.split()) < MIN_KEPT_WORDS:
        return answer
    return kept if cut or len(answer[len(kept):].split()) <= FRAGMENT_WORDS else answer


# a report of failure, with nothing after it (a clause after ",", ";" or ":" may still answer: "..., but 1889")
_NOTHING_FOUND = re.compile(
    r"(?:(?:i|we) )?(?:could not|couldn't|cannot|can't|did not|didn't|was unable to|am unable to|unable to) "
    r"(?:find|determine|locate|answer)\b"
    r"|no (?:answer|information|relevant|results?|data|evidence)\b"
    r"|(?:the )?answer (?:is )?(?:not (?:found|known|available|given)|unknown)\b"
    r"|not found\b|(?:i )?(?:do not|don't) know\b")


# a step's plan, not its answer: "To answer this question, I'll search ...", "Let me look at the results". The verb
# list keeps titles out ("To Kill a Mockingbird", "Let's Dance", "I Will Survive").
_PLAN = re.compile(
    r"(?:to|in order to) (?:answer|determine|find|identify|figure out|solve|call|check|verify)\b[^.]*?,\s*"
    r"(?:i|we|let's|let us|let me|follow|here)\b"
    r"|(?:i will|i'll|i need to|i am going to|i'm going to|let me|let's|let us|we need to|we will|we'll) "
    r"(?:search|look|find|check|use|call|open|analy[sz]e|determine|answer|identify|read|start|begin)\b")


def says_a_plan(answer: str) -> bool:
    """Whether the answer only says what the model is about to do (seen with the 1.5B model when its step ended
    before the answer: "To determine the year ..., we need to look at the results for ...")."""
    return bool(_PLAN.match(answer.strip().lower().replace("’", "'")))


def says_nothing_found(answer: str) -> bool:
    """Whether the answer only reports that none was found ("No answer found.", "I could not find the answer."):
    that is no answer (seen in `heavy ask`: two of eight trajectories answered "No answer found.")."""
    text = answer.strip().lower().replace("’", "'")
    return bool(_NOTHING_FOUND.match(text)) and not re.search(r"[,;:\d]", text)


def restates_question(answer: str, question: str) -> bool:
    """Whether the answer is the question said back (seen in the demo: the question, word for word, as the answer):
    nearly all its words are the question's, it holds most of them, and it still reads as the question (a question
    mark, or the question's first word first). "Scott Derrickson and Ed Wood were of the same nationality" answers
    "Were Scott Derrickson and Ed Wood of the same nationality?" with the same words."""
    said, asked = _WORD.findall(answer.lower()), _WORD.findall(question.lower())
    if not said or not asked or not (answer.rstrip().endswith("?") or said[0] == asked[0]):
        return False
    shared = set(said) & set(asked)
    return len(shared) >= 0.9 * len(set(said)) and len(shared) >= 0.6 * len(set(asked))


_OUTPUT_WORDS = frozenset({"the", "result", "output", "is", "was", "printed", "prints", "print", "returns", "value",
                           "code", "it", "of", "my", "this"})


def only_printed(answer: str, printed: str, question: str) -> bool:
    """Whether the answer only says what the python tool printed, in words (no number) the question does not use
    (seen in `heavy ask` on the with statement: "Hello, world!" and "The result is 'hello world'." from two
    trajectories that had tried a snippet). A printed number may be a computed answer and passes."""
    words = set(_WORD.findall(answer.lower())) - _OUTPUT_WORDS
    return (bool(words) and not any(ch.isdigit() for ch in answer) and words <= set(_WORD.findall(printed.lower()))
            and not words & set(_WORD.findall(question.lower())))


def printed_output(observations: Iterable[Observation]) -> str:
    """All the python tool printed in these observations (failed and repeated calls aside): what an answer must say
    more than."""
    return "\n".join(o.text for o in observations if o.call.name == PYTHON_TOOL and o.error is None and not o.repeated)


def computes_something_new(observation: Observation, earlier: Iterable[ActionStep]) -> bool:
    """Whether a python run worked something out: it ran without error (not refused as a repeat) and printed what no
    earlier call of the trajectory showed. A calculation moves the research on as new evidence does; the same output
    again (a program run twice, or another printing what one did) does not."""
    shown = printed_output([observation])
    return bool(shown) and shown != NO_OUTPUT and shown not in {o.text for step in earlier for o in step.observations}


def word_run(text: str) -> str:
    """The text's words, lowercased, one space apart: what two texts are compared by when case, punctuation and
    line breaks do not count."""
    return " ".join(_WORD.findall(text.lower()))


# "How many ...?", "How old ...?": a number or a name may answer them, not only an explanation
_HOW_MEASURE = frozenset({"many", "much", "long", "old", "far", "tall", "big", "large", "often", "few", "high", "deep",
                          "wide", "fast", "soon", "heavy", "small"})


def asks_how_or_why(question: str) -> bool:
    """Whether the question asks for an explanation: "How does ...?", "Why ...?", "What is the difference ...?"."""
    words = _WORD.findall(question.lower())
    return bool(words) and (words[0] in ("why", "explain", "describe") or "difference" in words[:6]
                            or (words[0] == "how" and words[1:2] != [] and words[1] not in _HOW_MEASURE))


def only_a_title(answer: str, question: str, titles: Iterable[str]) -> bool:
    """Whether the answer to a how or why question is only one of `titles` (seen in `heavy ask` on the with
    statement: three of eight answered "Python reference: Compound statements")."""
    return asks_how_or_why(question) and names_a_page(answer, titles)


def names_a_page(answer: str, titles: Iterable[str]) -> bool:
    """Whether the answer is only a page's title, or its part after a colon ("Compound statements" of "Python
    reference: Compound statements"), case and punctuation aside."""
    said = word_run(answer)
    return bool(said) and any(said == word_run(form) for title in titles for form in (title, title.rsplit(":", 1)[-1]))


_PRONOUNS = frozenset({"it", "this", "that", "they", "these", "which"})


def without_copied_sentences(answer: str, texts: Iterable[str], min_words: int = 5) -> str:
    """The answer less its sentences of `min_words` words or more that stand word for word in one of `texts`, a
    leading pronoun aside (seen in `heavy ask`: "... It returns titles, URLs and short snippets; open a URL to read
    it.", the search tool's description)."""
    ours = [word_run(t) for t in texts]
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        words = _WORD.findall(sentence.lower())
        words = words[1:] if words[:1] and words[0] in _PRONOUNS else words
        if len(words) < min_words or not any(" ".join(words) in text for text in ours):
            kept.append(sentence)
    return " ".join(kept)


def copies_text(answer: str, texts: list[str], min_words: int = 3) -> bool:
    """Whether the answer, `min_words` words or more, stands word for word (case and punctuation aside) in one of
    `texts`."""
    said = word_run(answer)
    return len(said.split()) >= min_words and any(said in word_run(t) for t in texts)


def unwrapped(text: str) -> str:
    """The answer inside '{"answer": "..."}' written as text (seen in `heavy ask`: a forced answer that was the
    call's JSON, cut off, shown as the trajectory's answer), its escapes read; other text as it is."""
    wrapped = _JSON_ANSWER.match(text)
    if wrapped is None:
        return text
    try:
        return json.loads(f'"{wrapped.group(1)}"')
    except json.JSONDecodeError:  # cut inside an escape
        return wrapped.group(1).replace("\\n", "\n")


def answer_line(text: str) -> str:
    """The first non-empty line of a model's answer, without copied tool-result headers, a leading "Answer:", and the
    quotes, stars and full stop a model wraps a short answer in. Shared by the agent loop and the aggregator."""
    text = without_result_headers(unwrapped(text))
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for prefix in ANSWER_PREFIXES:
        if line.lower().startswith(prefix):
            line = line[len(prefix):].strip()
    return line.strip(" .*`\"'")


def written_answer(arguments: dict) -> str | None:
    """An `answer` call's answer as text: a string, or a number written as JSON ({"answer": 42} to "How many ...?");
    None when there is none."""
    value = arguments.get("answer")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


def stated_confidence(arguments: dict) -> float:
    """The confidence an `answer` call states, clipped to 0..1."""
    try:
        return min(1.0, max(0.0, float(arguments.get("confidence", DEFAULT_CONFIDENCE))))
    except (TypeError, ValueError):
        return DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class Observation:
    call: ToolCall
    text: str
    sources: tuple[Source, ...] = ()  # new to the trajectory: not gathered before, or a page it first read whole
    error: str | None = None
    repeated: bool = False  # the same call was made before; not executed again


@dataclass(frozen=True)
class ActionStep:
    index: int
    content: str
    reasoning: str
    calls: tuple[ToolCall, ...]
    observations: tuple[Observation, ...]
    usage: Usage
    feedback: str = ""  # what the loop told the model after this step (repeats, unknown tools, nudges)


@dataclass(frozen=True)
class TrajectoryResult:
    index: int
    answer: str  # "" when the trajectory found nothing it could stand behind
    confidence: float  # 0..1, as reported by the model (defaults when it gave none)
    stop_reason: str  # answered | max_steps | tokens | no_progress | deadline | finish_now | ... | error
    cited: tuple[Source, ...]  # sources the answer cites, all of them fetched by this trajectory
    evidence: tuple[Source, ...]  # every source this trajectory fetched, in first-seen order
    steps: tuple[ActionStep, ...]
    usage: Usage
    temperature: float
    seed: int | None
    error: str | None = None
    excerpts: dict[str, str] = field(default_factory=dict)  # url -> text the tool returned with it

    @property
    def answered(self) -> bool:
        return bool(self.answer.strip())

    def summary(self) -> dict:
        return {
            "trajectory": self.index,
            "answer": self.answer,
            "confidence": self.confidence,
            "stop_reason": self.stop_reason,
            "steps": len(self.steps),
            "tool_calls": sum(len(s.calls) for s in self.steps),
            "tokens": self.usage.total_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "cited": [s.url for s in self.cited],
            "fetched": len(self.evidence),
            "error": self.error,
        }
