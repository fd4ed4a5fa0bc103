"""Prompts and the `answer` tool of the agent loop. General research prompts: nothing tuned to a data set."""

from __future__ import annotations

import re

ANSWER_TOOL = "answer"

ANSWER_SPEC = {
    "type": "function",
    "function": {
        "name": ANSWER_TOOL,
        "description": "Give your final answer when the evidence you found is enough. Ends the research.",
        "parameters": {
            "type": "object",
            "properties": {
                "answer": {"type": "string", "description": "The final answer, short and direct."},
                "confidence": {"type": "number", "description": "How sure you are, from 0 to 1."},
                "sources": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "URLs of the pages that support the answer.",
                },
            },
            "required": ["answer"],
        },
    },
}

SYSTEM = """You are a careful research assistant. Answer the user's question using the tools; do not rely on memory.
Work step by step:
1. Read the search results. Open a page when its snippet is cut short before the fact you need.
2. If the question needs a second fact (for example about a person or place named in the results), or compares \
two things, search for each one by name.
3. When you have the evidence, call the `answer` tool with a short answer (a name, a date, a number, or yes/no) \
and the URLs of the pages that support it.
Call one tool at a time. Use different search words if a search did not help. Never repeat the same call."""

QUESTION = "Question: {question}"
# The reasoning shown with the harness's opening searches (written as the assistant's own calls): a thinking model's
# API may refuse a tool-call turn that carries none (Moonshot's does), and the call should not look unexplained.
OPENING_THOUGHT = "Start from evidence: search for this before answering."

NUDGE_USE_TOOLS = (
    "Check this with the tools before answering: call `search` with a few key words from the question, "
    "or call `answer` if the results above already contain the answer."
)
NUDGE_CALL_ANSWER = "If you know the answer from the results above, call the `answer` tool now; otherwise search again."
REPEATED_CALL = (
    "You already called {tool} with these arguments (result above). Do not repeat it: "
    "search with different words, open another page, or call `answer`."
)
REPEATED_CALL_REPLACED = "You already called {tool} with these arguments (result above), so {instead} ran instead:"
ANSWER_UNSAID = "Your `answer` call had no answer in it."
EMPTY_ANSWER = (  # seen: {"confidence": .., "sources": [..]} with the answer itself left out, step after step.
    # No example words: a small model copies them as its answer ("a few words").
    'Your `answer` call had no answer in it. Write it like: '
    '{"name": "answer", "arguments": {"answer": "...", "sources": ["..."]}}'
)
NOTHING_FOUND_YET = (
    "An answer is still needed. Search with other key words or open a page from the results above, then call "
    "`answer`."
)
ANSWER_REPEATS_QUESTION = (
    "Your answer only repeats the question. Answer it from the results above, or search for what is missing."
)
ANSWER_IS_OUTPUT = (
    "Your answer is only what your code printed. Answer the question itself: {question}"
)
ANSWER_IS_A_TITLE = (
    "Your answer is only the title of a page. Answer the question itself, in a sentence, from what the page says: "
    "{question}"
)
UNKNOWN_TOOL = "There is no tool named {name}. Available tools: {available}."
CALLS_NOT_RUN = "Only {ran} tool calls run in one step; your {left} others did not run."
UNREADABLE_CALL = 'Your tool call could not be read. Write it like: {"name": "search", "arguments": {"query": "..."}}'
FORCE_ANSWER = (  # the question is repeated: after long tool outputs a small model loses track of it
    "Stop researching now. Question: {question}\n"
    "Using only the results above, reply with just the answer to this question, in a few words. No explanation."
)


# a tool written as in the instructions the tools give ("Open a page with open_page(url) ..."): no answer says it
_TOOL_IN_CODE = re.compile(r"\b(?:open_page|search|python|answer)\((?:url|query|code|answer)?\)")


def copies_instructions(answer: str) -> bool:
    """Whether an answer is our instructions copied back: a description from the `answer` tool's own spec (seen:
    "The final answer, short and direct.") or a sentence naming a tool as the search results' footer does (seen
    on HotpotQA: "Open a web page with open_page(url) to read it before citing it.")."""
    function = ANSWER_SPEC["function"]
    said = answer.strip().rstrip(".").lower()
    described = [function["description"]] + [p["description"] for p in function["parameters"]["properties"].values()]
    return any(said == str(d).rstrip(".").lower() for d in described) or bool(_TOOL_IN_CODE.search(answer))
