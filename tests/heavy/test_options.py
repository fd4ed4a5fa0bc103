"""Questions offering a choice: answers naming one option vote for it; a surname votes with the full name it ends."""

import pytest

from heavy.aggregate import agreeing, tally, vote
from heavy.aggregate.options import as_options, chosen_option, offered_options
from heavy.aggregate.vote import fold_surnames
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

pytestmark = pytest.mark.anyio

DOGS = "Which dog's ancestors include Gordon and Irish Setters: the Manchester Terrier or the Scotch Collie?"


@pytest.mark.parametrize(("question", "options"), [
    ("Who is older, Annie Morton or Terry Richardson?", ("Annie Morton", "Terry Richardson")),
    ("Which band, Letters to Cleo or Screaming Trees, had more members?", ("Letters to Cleo", "Screaming Trees")),
    (DOGS, ("Manchester Terrier", "Scotch Collie")),
    ("Which club did he join first; Manchester United or Manchester City?", ("Manchester United", "Manchester City")),
    ("Which is older, the Eiffel Tower, or Big Ben?", ("Eiffel Tower", "Big Ben")),
    ("Which was first, either the Beatles or the Stones?", ("Beatles", "Stones")),
    ("Which band, Letters to Cleo or Screaming Trees had more members?", ("Letters to Cleo", "Screaming Trees")),
    ("Which is bigger, a cat or a dog?", ("cat", "dog")),
    ("Is Paris or London bigger?", None),  # no punctuation before the "or": where the first option starts is a guess
    ("Were Scott Derrickson and Ed Wood of the same nationality?", None),
    ("Which is it, red or red?", None),  # nothing tells the options apart
    ("Which came first, the film that Sam Raimi directed in his twenties or the novel?", None),  # a clause
])
def test_the_options_a_question_offers_are_read_between_its_punctuation(question, options):
    assert offered_options(question) == options


def test_a_short_answer_names_the_option_it_alone_has_a_word_of():
    options = ("Manchester United", "Manchester City")
    assert chosen_option("City", options) == "Manchester City"
    assert chosen_option("Manchester", options) is None  # a word both share
    assert chosen_option("United or City", options) == ""  # both: the choice restated, no answer
    assert chosen_option("Arsenal", options) is None  # neither
    assert chosen_option("Manchester City won the league in 2012 and again in 2014", options) is None  # a sentence
    assert as_options(DOGS, {0: "Scottish Collie", 1: "collie", 2: "Manchester Terrier or Scotch Collie",
                             3: "Beagle"}) == {0: "Scotch Collie", 1: "Scotch Collie", 2: "", 3: "Beagle"}


async def test_answers_naming_one_option_vote_for_it_as_the_question_writes_it():
    # seen at n=8: "Scottish Collie" 3 and "collie" 1 lost to "Manchester Terrier" 3 as separate answers
    answers = ["Manchester Terrier"] * 3 + ["Scottish Collie"] * 3 + ["collie", "Manchester Terrier or Scotch Collie"]
    decided = await vote(DOGS, [result(i, a) for i, a in enumerate(answers)], backend=None)
    assert decided.answer == "Scotch Collie" and decided.agreement == pytest.approx(4 / 7)
    assert [(g.answer, len(g.members)) for g in decided.groups][:2] == [("Scotch Collie", 4), ("Manchester Terrier", 3)]


async def test_the_judges_readings_naming_an_option_are_ballots_for_it():
    backend = ScriptedBackend(lambda request: text("the Scottish collie"))
    page = source("http://corpus/collie", "The Scotch Collie's ancestors include Gordon and Irish Setters.")
    results = [result(0, "Manchester Terrier", evidence=[page]), result(1, "Scotch Collie", evidence=[page])]
    decided = await vote(DOGS, results, backend)  # a tie: the judge reads, and its readings name an option
    assert decided.reads == {0: "the Scottish collie", 1: "the Scottish collie"}
    assert decided.judged and decided.answer == "Scotch Collie" and decided.backers == (1,)


async def test_only_to_a_who_question_does_a_surname_vote_with_a_full_name():
    answers = ["Washington"] * 3 + ["George Washington"] * 2
    asked_who = await vote("Who was the first president?", [result(i, a) for i, a in enumerate(answers)], None)
    assert asked_who.answer == "George Washington" and asked_who.agreement == 1.0
    asked_where = await vote("Which state is Seattle in?", [result(i, a) for i, a in enumerate(answers)], None)
    assert asked_where.answer == "Washington" and asked_where.agreement == pytest.approx(3 / 5)


def test_a_surname_joins_the_one_full_name_it_ends_written_in_full():
    groups = fold_surnames(tally([result(i, "Spector") for i in range(5)] + [result(5, "Phil Spector")]))
    assert [(g.answer, len(g.members)) for g in groups] == [("Phil Spector", 6)]
    two_hosts = fold_surnames(tally([result(0, "Schmeichel"), result(1, "Peter Schmeichel"),
                                     result(2, "Kasper Schmeichel")]))
    assert len(two_hosts) == 3  # which Schmeichel is not known
    apart = fold_surnames(tally([result(0, "1974"), result(1, "1969 until 1974"), result(2, "Indianapolis"),
                                 result(3, "Indianapolis Motor Speedway")]))
    assert len(apart) == 4  # a number, and a first word, are not surnames


async def test_the_judge_finds_pages_by_the_answers_own_words_and_its_reading_votes_as_an_option():
    question = "Which writer was from England, Henry Roth or Robert Erskine Childers?"
    pages = [source("http://corpus/roth", "Henry Roth was an American novelist and writer from New York."),
             source("http://corpus/childers", "Erskine Barton Childers was a writer; his father was born in "
                    "England.")]
    backend = ScriptedBackend(lambda request: text(request.messages[0]["content"].split("\n")[1].split(":")[0][4:]))
    decided = await vote(question, [result(0, "Erskine Barton Childers", evidence=pages)], backend)
    first_read = backend.requests[0].messages[0]["content"].split("\n")[1]
    assert first_read.startswith("[1] childers")  # the page holding the answer as written
    assert decided.answer == "Robert Erskine Childers" and decided.backers == (0,)


def test_the_early_stop_counts_agreement_as_the_vote_does():
    results = [result(0, "Scottish Collie"), result(1, "collie"), result(2, "The Scotch Collie.")]
    assert agreeing(results, 3) is None  # three ways of writing it, without the question's options
    assert agreeing(results, 3, DOGS).answer == "Scotch Collie"
    spector = [result(0, "Spector"), result(1, "Phil Spector")]
    assert agreeing(spector, 2, "Who wrote the song?").answer == "Phil Spector"


def test_the_early_stop_counts_no_agreement_on_what_the_vote_counts_as_no_answer():
    question = "Which game did Ken St. Andre write beside Tunnels & Trolls?"
    restating = [result(i, "Tunnels &amp; Trolls") for i in range(3)]
    assert agreeing(restating, 3, question) is None  # the question's own game: no answer, so no agreement
    said = [result(0, "Yes, both were American."), result(1, "yes"), result(2, "Yes")]
    assert agreeing(said, 3, "Were Scott Derrickson and Ed Wood of the same nationality?").answer == "yes"
