"""A search query as an FTS5 match expression: its words quoted and OR-ed for BM25, function words left out."""

from __future__ import annotations

import re

# English function words, left out of a query unless capitalised inside it (a name: the band "For Against"). BM25
# weighs a word by its rarity in the corpus, and in a small technical one "what", "does" and "do" are rare: the
# question "What does the yield statement do in a Python function?" found the page 'The "yield" statement' in no
# top 5 over Python's reference topics. Measured with no model (docs/heavy_mode.md, "Local search"): 20 such
# questions found their page in the top 5 14 times keeping them, 20 leaving them out; HotpotQA's 49 questions as
# asked, both gold paragraphs in the top 5 31 and 30 times, in the top 10 44 and 45.
FUNCTION_WORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he",
    "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "of", "off", "on", "once", "only",
    "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such",
    "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
    "while", "who", "whom", "whose", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves"
})

# Function words that are keywords of programming languages (Python, C, JavaScript, SQL): before one of
# KEYWORD_NOUNS one names the subject of the question ("the with statement", "the in operator", "the where clause"),
# kept in the query and searched as a phrase of titles too. Over Python's reference topics the answering page of
# "How does the with statement handle an exception raised inside its block?" ranked 5th, now 1st; of 10 such
# questions (scripts/probe_search.py) 5 found their page first, now 8 (the word alone: 5; the phrase anywhere: 5).
KEYWORD_WORDS = frozenset({"all", "and", "any", "as", "between", "by", "do", "for", "from", "having", "if", "in",
                           "into", "is", "not", "on", "or", "then", "this", "until", "when", "where", "while", "with"})
KEYWORD_NOUNS = frozenset({"statement", "statements", "clause", "clauses", "keyword", "keywords", "operator",
                           "operators", "loop", "loops", "expression", "expressions", "block", "blocks"})


def match_expression(query: str, keep_function_words: bool = False, beside_other_terms: bool = False) -> str | None:
    """The query as an FTS5 expression: every word quoted (no operator syntax leaks through), OR-ed for BM25; the
    function words left out (FUNCTION_WORDS) unless there is nothing else (and no `beside_other_terms`: a CJK
    query's runs), or they name a language's keyword."""
    written = re.findall(r"\w+", query)
    tokens = [t.lower() for t in written]
    named = [] if keep_function_words else [  # positions of keywords named by the noun after them
        k for k in range(len(tokens) - 1) if tokens[k] in KEYWORD_WORDS and tokens[k + 1] in KEYWORD_NOUNS]
    words = [t for k, t in enumerate(tokens) if keep_function_words or t not in FUNCTION_WORDS
             or (k > 0 and written[k][:1].isupper()) or k in named]
    terms = [f'"{w}"' for w in dict.fromkeys(words or ([] if beside_other_terms else tokens))]
    # the keyword and its noun as a phrase of a title: 'The "with" statement', not a body's "... the in operator"
    phrases = dict.fromkeys(f'title : "{tokens[k]} {tokens[k + 1]}"' for k in named)
    return " OR ".join([*phrases, *terms]) or None


def expression_words(expression: str) -> set[str]:
    """The words a match expression searches (each quoted, alone or in a phrase)."""
    return {word for quoted in re.findall(r'"([^"]*)"', expression) for word in quoted.split()}
