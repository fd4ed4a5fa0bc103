"""Opening searches: the named parts of a question, and which part each trajectory searches."""

from heavy.agent.openings import clauses, focus_query, named_parts


def test_a_comparison_gives_both_names_and_each_on_its_own():
    assert named_parts("Were Scott Derrickson and Ed Wood of the same nationality?") == [
        "Scott Derrickson and Ed Wood", "Scott Derrickson", "Ed Wood"]


def test_quoted_titles_and_names_with_joiners_are_kept_whole():
    parts = named_parts('What is the name for the adventure in "Tunnels and Trolls", a game designed by Ken St. Andre?')
    assert parts == ["Tunnels and Trolls", "Ken St. Andre"]
    assert named_parts("Which band, Letters to Cleo or Screaming Trees, had more members?") == [
        "Letters to Cleo", "Screaming Trees"]


def test_single_words_come_last_and_bare_numbers_are_left_out():
    parts = named_parts("Seven Brief Lessons on Physics was written by an Italian physicist in France since 1990?")
    assert parts == ["Seven Brief Lessons on Physics", "Italian", "France"]


def test_a_question_without_names_or_made_only_of_a_name_has_no_focus():
    assert named_parts("what science fantasy series is told in first person?") == []
    assert named_parts("Python") == []
    assert focus_query("what science fantasy series is told in first person?", 3) is None


def test_trajectory_zero_starts_like_a_lone_trajectory_and_the_others_cycle_over_the_parts():
    question = "Who is older, Annie Morton or Terry Richardson?"
    assert [focus_query(question, k) for k in range(5)] == [
        None, "Annie Morton", "Terry Richardson", "Annie Morton", "Terry Richardson"]


def test_a_question_asking_several_things_has_its_clauses_searched_before_a_lone_name():
    # the demo's question: its only name, "Python", led trajectories to pages on exceptions and literals
    question = ("In Python, what do the break and continue statements do inside a for or while loop, and how does "
                "the else clause of a loop interact with break?")
    loop = "what do the break and continue statements do inside a for or while loop"
    other = "how does the else clause of a loop interact with break"
    assert clauses(question) == [loop, other]
    assert [focus_query(question, k) for k in range(5)] == [None, loop, other, "Python", loop]


def test_a_clause_of_names_or_of_one_part_is_no_clause_to_search():
    assert clauses("Which band, Letters to Cleo or Screaming Trees, had more members?") == []
    assert clauses("Who is older, Annie Morton or Terry Richardson?") == []
    assert clauses("What government position was held by the woman who portrayed Corliss Archer in the film?") == []
