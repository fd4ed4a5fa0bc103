"""How well the local search finds the page a question is about, keeping or leaving out its function words.

No model: the question as asked is the query (a trajectory's opening search), over two corpora, the settings side by
side in one run:
- HotpotQA's 49 questions over the eval's corpus of all their paragraphs: how often both gold paragraphs are in
  the top 5 (the search tool's default) and the top 10;
- 20 questions on Python, written as a user would ask them, over Python's reference topics (`heavy up`'s corpus),
  each with the pages that answer it: how often one of them is first, and in the top 5; and 10 more whose subject is
  a keyword that is also a function word ("the with statement").
Rows: every word kept (as before), function words left out, and those but the keywords they name (the default).

    .venv/bin/python scripts/probe_search.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, load_questions, write_corpus  # the eval's questions, beside this script

from heavy.corpus import query
from heavy.corpus.commands import corpus_add
from heavy.corpus.index import CorpusIndex
from heavy.stdlib_corpus import build_stdlib_corpus

# (question, the reference topics that answer it)
PYTHON_QUESTIONS = [
    ("What does the yield statement do in a Python function?", ['The "yield" statement']),
    ("How does the with statement handle an exception raised inside its block?",
     ['The "with" statement', "With Statement Context Managers"]),
    ("What does the global statement declare?", ['The "global" statement']),
    ("What is the difference between nonlocal and global?", ['The "nonlocal" statement', 'The "global" statement']),
    ("When is the else clause of a for loop executed?", ['The "for" statement']),
    ("What does the pass statement do?", ['The "pass" statement']),
    ("How do I raise an exception from another exception?", ['The "raise" statement']),
    ("What does a lambda expression create?", ["Lambdas"]),
    ("Which objects are considered false in a boolean context?", ["Truth Value Testing"]),
    ("Does the power operator bind more tightly than unary minus?", ["The power operator", "Operator precedence"]),
    ("How does the assert statement behave when optimization is enabled?", ['The "assert" statement']),
    ("What does the del statement do to a name?", ['The "del" statement']),
    ("How are keyword arguments matched to parameters in a call?", ["Calls"]),
    ("Which dict method gets a value with a default when the key is missing?", ['Mapping Types — "dict"']),
    ("What does await do inside a coroutine?", ["Await expression", "Coroutines"]),
    ("How do you define a class with a metaclass?", ["Class definitions"]),
    ("What does the finally clause of a try statement do?", ['The "try" statement']),
    ("How does the import statement find a module?", ['The "import" statement']),
    ("What does the continue statement do in a loop?", ['The "continue" statement']),
    ("What does the return statement do in a generator?", ['The "return" statement']),
]
# questions whose subject is a keyword that is also a function word (written before the rule that keeps such words)
KEYWORD_QUESTIONS = [
    ("How does the with statement handle an exception raised inside its block?",
     ['The "with" statement', "With Statement Context Managers"]),
    ("How does the in operator test membership?", ["Membership test operations"]),
    ("When does the else clause of a while loop run?", ['The "while" statement']),
    ("What does the if statement do when no condition is true?", ['The "if" statement']),
    ("What does the not operator return?", ["Boolean operations"]),
    ("How does the and operator short-circuit?", ["Boolean operations"]),
    ("What does the is operator compare?", ["Comparisons"]),
    ("What does the from clause of a raise statement set?", ['The "raise" statement']),
    ("What names does the as clause of a with statement bind?", ['The "with" statement',
                                                                 "With Statement Context Managers"]),
    ("How does a for loop over a list handle items added during the loop?", ['The "for" statement']),
]
TITLE_PREFIX = "Python reference: "  # build_stdlib_corpus's titles


def hotpotqa_hits(index: CorpusIndex, rows: list[dict], k: int) -> int:
    """Questions whose gold paragraphs are all among the top k results of the question as asked."""
    return sum({title for title, _ in row["supporting_facts"]} <= {h.title for h in index.search(row["question"], k)}
               for row in rows)


def python_hits(index: CorpusIndex, k: int, questions=PYTHON_QUESTIONS) -> int:
    """Questions with a page that answers them among the top k results of the question as asked."""
    return sum(bool({TITLE_PREFIX + t for t in pages} & {h.title for h in index.search(question, k)})
               for question, pages in questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    rows = load_questions(args.data, None)
    with tempfile.TemporaryDirectory() as tmp:
        corpus_add(write_corpus(rows, Path(tmp)), Path(tmp) / "hotpotqa.sqlite")
        build_stdlib_corpus(Path(tmp) / "python.sqlite")
        print(f"{'query words':<34}{'HotpotQA both gold, top 5':>26}{'top 10':>8}"
              f"{'Python page first':>19}{'top 5':>7}{'keyword q. first':>18}{'top 5':>7}")
        settings = ((True, "all (before)", query.KEYWORD_WORDS), (False, "function words left out", frozenset()),
                    (False, "... but keywords they name", query.KEYWORD_WORDS))
        for keep, name, keyword_words in settings:
            query.KEYWORD_WORDS = keyword_words  # the module's constant, set per row
            hotpot = CorpusIndex(Path(tmp) / "hotpotqa.sqlite", keep_function_words=keep)
            python = CorpusIndex(Path(tmp) / "python.sqlite", keep_function_words=keep)
            cells = [f"{hotpotqa_hits(hotpot, rows, k)}/{len(rows)}" for k in (5, 10)]
            cells += [f"{python_hits(python, k, questions)}/{len(questions)}"
                      for questions in (PYTHON_QUESTIONS, KEYWORD_QUESTIONS) for k in (1, 5)]
            print(f"{name:<34}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (26, 8, 19, 7, 18, 7), strict=True)))


if __name__ == "__main__":
    main()
