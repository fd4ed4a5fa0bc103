"""Rivals of a claim: the claim with one of its numbers, else names, swapped for another its passage holds."""

from heavy.aggregate.swaps import swapped

PAGE = ("The Eiffel Tower was begun in 1887 and finished in 1889 by Gustave Eiffel's company. It is in Paris, and "
        "1,665 steps lead to its top.")


def test_a_number_is_swapped_first_for_the_passages_other_numbers_in_their_order():
    assert swapped("The tower was finished in 1887.", PAGE) == ("The tower was finished in 1889.",
                                                              "The tower was finished in 1,665.")
    assert swapped("The tower has 1,665 steps.", PAGE, limit=1) == ("The tower has 1887 steps.",)


def test_then_a_name_for_the_passages_other_names_never_for_one_holding_it_or_held_by_it():
    rivals = swapped("Gustave Eiffel built the tower in Paris.", PAGE, limit=4)
    assert rivals == ("Eiffel Tower built the tower in Paris.", "Gustave Eiffel built the tower in Eiffel Tower.")
    assert swapped("The Eiffel Tower is in Paris.", "The Eiffel Tower stands in Paris.") == ()  # nothing else named
    assert swapped("It was finished in 1889.", "Finished in 1889.") == ()


def test_a_lone_capitalised_word_opening_a_sentence_is_no_name_and_possessives_and_articles_go():
    assert swapped("It opened in Paris.", "It is tall. In Lyon it is not. Gustave Eiffel's tower.", limit=4) == (
        "It opened in Lyon.", "It opened in Gustave Eiffel.")
