"""heavy/agent/gathered.py: what a trajectory keeps of a page it saw in several views."""

from heavy.agent.gathered import merged_text, unescaped


def test_a_snippet_the_opened_page_holds_in_escaped_markdown_is_not_kept_twice():
    # open_page's trafilatura escapes Markdown's specials ("\_", "\*"), the index's snippets are the plain text:
    # the page's sentence was kept in both spellings, and quoted twice in a report
    opened = 'Names\n\nElsewhere, "\\_" is a regular identifier. A \\*raised\\* error.'
    snippet = '… Elsewhere, "_" is a regular identifier. A *raised* error …'
    assert merged_text(opened, snippet) == opened
    assert merged_text(opened, "… It is often used for \"special\" names …").endswith('used for "special" names …')


def test_unescaping_undoes_backslash_escapes_of_punctuation_only():
    assert unescaped(r"\_\_enter\_\_ \*x\* \[1\] \<stdin> 1\. \\ \n") == r"__enter__ *x* [1] <stdin> 1. \ \n"
