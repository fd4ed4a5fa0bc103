"""Aggregation: normalised vote, LLM judge on ties, report claims filtered against fetched sources. The answers as
they reach the vote (cut short, restating the question, of the wrong kind): test_aggregate_shorten.py."""

import pytest

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate import AggregationConfig, aggregate, normalize_answer, tally, vote
from heavy.aggregate.evidence import token_f1
from heavy.aggregate.judge import REPLY_NUMBER, REPLY_PHRASE, REPLY_YES_NO, reading_order
from heavy.aggregate.normalize import as_sources_write, plain_answer
from heavy.aggregate.vote import Group, ballots_winner
from heavy.llm.types import LLMError, Usage
from tests.heavy.fakes import ScriptedBackend, source, text, thinking

pytestmark = pytest.mark.anyio

EIFFEL = source("http://corpus/eiffel", "The Eiffel Tower was finished in 1889.")
LOUVRE = source("http://corpus/louvre", "The Louvre pyramid was finished in 1989.")


def result(index, answer, *, cited=(), evidence=None, confidence=0.5):
    evidence = tuple(cited) if evidence is None else tuple(evidence)
    return TrajectoryResult(index=index, answer=answer, confidence=confidence, stop_reason="answered",
                            cited=tuple(cited), evidence=evidence, steps=(), usage=Usage(100, 10),
                            temperature=0.0, seed=index, excerpts={s.url: s.snippet for s in evidence})


def test_normalisation_matches_the_official_metric():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_an_answer_copied_with_a_pages_headings_is_shown_and_voted_without_them():
    copied = "The 'break' statement\n************************\ncontinue_stmt ::= \"continue\"\n\nIt goes on."
    assert plain_answer(copied) == 'continue_stmt ::= "continue"\n\nIt goes on.'
    assert plain_answer("## Loops\nfor and while") == "for and while"
    assert plain_answer("a - b\n- a list item\n| x |\n|---|") == "a - b\n- a list item\n| x |\n|---|"
    groups = tally([result(0, copied), result(1, 'continue_stmt ::= "continue"\n\nIt goes on.')])
    assert [(g.answer, g.members) for g in groups] == [('continue_stmt ::= "continue"\n\nIt goes on.', (0, 1))]


def test_tally_groups_equal_normalised_answers_and_ignores_empty_ones():
    groups = tally([result(0, "1889."), result(1, "1889"), result(2, "1887"), result(3, "")])
    assert [(g.answer, g.members) for g in groups] == [("1889", (0, 1)), ("1887", (2,))]
    dashes = tally([result(0, "1903–1912"), result(1, "1903-1912"), result(2, "1903-1912"), result(3, "Mangnall’s")])
    assert [(g.answer, g.members) for g in dashes][0] == ("1903-1912", (0, 1, 2))  # a typographic dash is a dash
    escaped = tally([result(0, "Tunnels &amp; Trolls"), result(1, "Tunnels & Trolls"), result(2, "Arena")])
    assert [(g.answer, g.members) for g in escaped][0] == ("Tunnels & Trolls", (0, 1))  # from an escaped title
    plural = tally([result(0, "Yellowcraigs"), result(1, "Yellowcraig"), result(2, "the 1990s"), result(3, "1990"),
                    result(4, "Chess"), result(5, "Ches")])
    assert [(g.answer, g.members) for g in plural][0] == ("Yellowcraig", (0, 1))  # equally common: the shorter
    assert len(plural) == 5  # a decade is no year, "chess" no plural


def test_an_answer_is_written_in_the_form_the_pages_write_most():
    pages = ["Yellowcraig is a beach near Dirleton. Yellowcraig has a nature trail.", "The YELLOWCRAIG car park."]
    assert as_sources_write("Yellowcraigs", pages) == "Yellowcraig"  # the pages' most frequent form
    assert as_sources_write("the Beatle", ["The Beatles' first album"]) == "Beatles"
    assert as_sources_write("Scotch Collies", ["The Scotch Collie's ancestors"]) == "Scotch Collie"  # no possessive
    assert as_sources_write("Yellowcraig", ["Yellowcraigs and Yellowcraig"]) == "Yellowcraig"  # a tie: as given
    assert as_sources_write("Yellowcraigs", ["# Yellowcraigs", *pages]) == "Yellowcraig"  # the form written most
    assert as_sources_write("paris", ["Paris is big."]) == "paris"  # one form, written otherwise only in case
    assert as_sources_write("Dirletons", ["Yellowcraig beach"]) == "Dirletons"  # never mentioned: as given
    assert as_sources_write("1990s", ["the 1990"]) == "1990s"  # not a plural
    assert as_sources_write("Yellowcraigs", ["Yellowcraigston is a village."]) == "Yellowcraigs"  # whole words only


async def test_the_winning_answer_is_respelled_as_its_pages_write_it():
    beach = source("http://corpus/yellowcraig", "Yellowcraig is a coastal area of forest, beach and grassland.")
    results = [result(0, "Yellowcraigs", cited=[beach]), result(1, "Yellowcraigs", cited=[beach]),
               result(2, "Yellowcraig", cited=[beach]), result(3, "North Berwick", cited=[beach])]
    decided = await vote("Which coastal area is next to the village?", results, backend=None)
    assert decided.answer == "Yellowcraig" and decided.backers == (0, 1, 2)
    assert decided.groups[0].answer == "Yellowcraig"


async def test_every_trajectory_reads_the_jobs_best_pages_and_a_majority_of_readings_wins():
    backend = ScriptedBackend(lambda request: text(
        "1889" if "Eiffel Tower was finished in 1889" in request.messages[0]["content"] else "1887"))
    results = [result(0, "1887", evidence=[LOUVRE]), result(1, "1850", evidence=[EIFFEL]),
               result(2, "1901", evidence=[LOUVRE])]
    decided = await vote("When was the Eiffel Tower finished?", results, backend)
    assert decided.reads == {0: "1889", 1: "1889", 2: "1889"}  # 0 and 2 never fetched the Eiffel page themselves
    assert decided.judged and decided.answer == "1889" and decided.cited == (EIFFEL.url,)
    assert sorted(r.request_id for r in backend.requests) == ["read:0", "read:1"]  # two pages, two orders


async def test_trajectories_read_the_pages_in_different_orders_a_lone_one_in_rank_order():
    pages = [source(f"http://corpus/{name}", f"The {name} tower was finished in {year}.")
             for name, year in (("eiffel", 1889), ("tokyo", 1958), ("berlin", 1969))]
    backend = ScriptedBackend(lambda request: text(request.messages[0]["content"].split("finished in ")[1][:4]))
    question = "When was the eiffel tower finished?"
    decided = await vote(question, [result(i, "", evidence=pages) for i in range(4)], backend)
    firsts = {r.request_id: r.messages[0]["content"].split("\n")[1] for r in backend.requests}
    assert firsts["read:0"].startswith("[1] eiffel") and len(set(firsts.values())) == 3  # 3 pages, 3 first pages
    assert decided.reads == {0: "1889", 1: "1958", 2: "1969", 3: "1969"}  # what each reads first, here
    orders = [reading_order(list("abcd"), n) for n in range(8)]
    assert len({"".join(order) for order in orders}) == 8  # four pages: eight orders
    alone = ScriptedBackend(backend.script)
    await vote(question, [result(0, "", evidence=pages)], alone)
    assert alone.requests[0].messages[0]["content"].split("\n")[1].startswith("[1] eiffel")


async def test_split_ballots_go_to_the_reading_of_the_pooled_pages_in_rank_order():
    def script(request):
        return text({"read:0": "1889", "read:1": "1887"}[request.request_id])

    backend = ScriptedBackend(script)
    decided = await vote("When was the Eiffel Tower finished?",
                         [result(0, "1887", cited=[LOUVRE]), result(1, "1889", cited=[EIFFEL])], backend)
    assert decided.judged and decided.answer == "1889" and decided.agreement == 0.5
    assert [r.request_id for r in backend.requests] == ["read:0", "read:1"]  # the tie needs no further call
    prompt = backend.requests[0].messages[0]["content"]
    assert prompt.index("Eiffel Tower was finished in 1889") < prompt.index("Louvre pyramid")  # ranked first
    assert '"1887"' not in prompt  # the judge is not anchored to the candidates
    assert decided.cited == (EIFFEL.url,) and decided.backers == (1,)


async def test_a_reading_that_wins_the_ballots_is_not_handed_to_an_answer_it_only_overlaps():
    backend = ScriptedBackend(lambda request: text("Indianapolis Motor Speedway"))
    answers = ["Indianapolis", "Indianapolis", "1952", "Darlington Raceway"]
    decided = await vote("What race track in the midwest hosts a 500 mile race every May?",
                         [result(i, answer, evidence=[EIFFEL]) for i, answer in enumerate(answers)], backend)
    assert decided.answer == "Indianapolis Motor Speedway" and decided.judged and decided.backers == ()
    assert token_f1("Indianapolis Motor Speedway", "Indianapolis") >= 0.5  # what used to hand it over


async def test_a_majority_wins_without_the_judge():
    backend = ScriptedBackend(lambda request: text("1887"))
    decided = await vote("When?", [result(0, "1889"), result(1, "1889"), result(2, "1887")], backend)
    assert decided.answer == "1889" and not decided.judged and not backend.requests


async def test_with_read_on_majority_the_readings_vote_beside_a_majority():
    backend = ScriptedBackend(lambda request: text("1889"))
    results = [result(0, "1887", evidence=[EIFFEL]), result(1, "1887", evidence=[EIFFEL]), result(2, "1889")]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="answer", results=results,
                          backend=backend, config=AggregationConfig(read_on_majority=True))
    assert job.answer == "1889" and job.reads == {0: "1889", 1: "1889", 2: "1889"}  # 4 ballots against 2
    assert [r.request_id for r in backend.requests] == ["read:0"]  # one page: one order, read once
    unset = await aggregate(job_id="k", question="When was the Eiffel Tower finished?", mode="answer",
                            results=results, backend=backend)
    assert unset.answer == "1887" and not unset.reads  # by default a majority wins outright


@pytest.mark.parametrize("room", [0, 100])
async def test_the_aggregators_calls_leave_a_thinking_model_room_to_reason(room):
    backend = ScriptedBackend(thinking(lambda request: text("1889"), cost=60))
    results = [result(0, "1887", evidence=[EIFFEL]), result(1, "1887", evidence=[EIFFEL]), result(2, "1889")]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="answer", results=results,
                          backend=backend, config=AggregationConfig(read_on_majority=True, reasoning_tokens=room))
    assert all(r.max_tokens > room for r in backend.requests) and backend.requests
    # without room the reading ends inside the model's reasoning: no ballot, and the majority stands
    assert job.answer == ("1889" if room else "1887")
    assert set(job.reads.values()) == ({"1889"} if room else {""})


async def test_a_spread_vote_without_a_majority_goes_to_the_judge():
    answers = ["1889", "1889", "1887", "1901", "1850"]
    backend = ScriptedBackend(lambda request: text("It was 1887"))
    decided = await vote("When?", [result(i, a, evidence=[LOUVRE]) for i, a in enumerate(answers)], backend)
    assert decided.judged and decided.answer == "1887" and decided.agreement == 0.2
    assert [g.answer for g in decided.groups][:2] == ["1887", "1889"]
    unfetched = await vote("When?", [result(i, a) for i, a in enumerate(answers)], backend)
    assert unfetched.answer == "1889" and not unfetched.judged  # nothing fetched: nothing for a judge to read


async def test_every_trajectory_casts_its_answer_and_its_reading():
    # Seen on HotpotQA: the gold number from two answers and a sentence holding it, with two readings elsewhere.
    question = "How many people live in the county of Brown State Fishing Lake?"
    answers = ["9,984", "9,984", "In 2010 the county had 9,984 inhabitants by the census count.", "13", "13", "366"]
    pages = [source(f"http://corpus/{i}", f"Page {i} on the census of the county of Brown.") for i in range(6)]
    results = [result(i, a, evidence=[pages[i]]) for i, a in enumerate(answers)]  # each reading is its own call

    def reading(readings):
        def script(request):
            if request.request_id.startswith("shorten:"):
                return text(request.messages[-1]["content"].split("Answer: ")[-1])  # cannot cut it
            return text(readings.get(request.request_id, "yes"))  # "yes" is no answer to "how many"
        return ScriptedBackend(script)

    backend = reading({"read:0": "9,984", "read:3": "13"})
    decided = await vote(question, results, backend)  # 9,984: three answers and a reading; 13: two and one
    assert decided.answer == "9,984" and decided.backers == (0, 1, 2) and decided.judged
    assert not [r for r in backend.requests if r.request_id == "judge"]
    backend = reading({"read:0": "366", "read:3": "13"})
    tied = await vote(question, results, backend)  # 9,984 and 13 have three ballots each, 13 one of them read
    assert tied.answer == "13" and tied.backers == (3, 4)  # the readings break it, not reading 0's untied "366"
    assert "judge" not in [r.request_id for r in backend.requests]


def test_a_tie_of_ballots_goes_to_reading_0_if_tied_else_to_the_tied_answer_read_most():
    def group(key, *members):
        return Group(key=key, answer=key, members=members, confidence=0.0)

    answered = [group("tupolev", 0, 1, 2), group("bewilderbeast", 3), group("badly drawn boy", 4)]
    read = [group("canberra", 0, 1, 2), group("bewilderbeast", 3, 4), group("badly drawn boy", 5)]
    # three answers tied at three ballots; reading 0 is none of them: the one read most wins
    assert ballots_winner(answered, read, "Badly Drawn Boy", 2) == ("canberra", frozenset({0, 1, 2}), True)
    assert ballots_winner(answered, read, "Tupolev", 2) is None  # reading 0 is tied: it decides, as before
    assert ballots_winner(answered, [*read, group("canberra", 6)], "Tupolev", 2) == ("canberra", frozenset(
        {0, 1, 2, 6}), True)  # four ballots: no tie
    alike = [group("a", 0), group("b", 1), group("c", 2)]  # "a" and "b" tied at three ballots, one reading each
    assert ballots_winner([group("a", 0, 1), group("b", 2, 3)], alike, "c", 2) is None  # read alike: reading 0 decides
    assert ballots_winner([group("a", 0)], [group("b", 0)], "", 2) is None  # one ballot each is no consensus


@pytest.mark.parametrize(("question", "reply"), [
    ("Were Scott Derrickson and Ed Wood of the same nationality?", REPLY_YES_NO),
    ("Who was known by his stage name Aladin?", REPLY_PHRASE),
    ("Who is older, Annie Morton or Terry Richardson?", REPLY_PHRASE),
    ("The lake is in a county that has a population of how many inhabitants ?", REPLY_NUMBER),
])
async def test_the_judge_asks_for_the_kind_of_reply_the_question_wants(question, reply):
    backend = ScriptedBackend(lambda request: text("1889"))
    await vote(question, [result(0, "", evidence=[EIFFEL])], backend)
    prompt = backend.requests[0].messages[0]["content"]
    assert prompt.endswith(reply) and ("yes or no" in prompt) == (reply == REPLY_YES_NO)


async def test_the_judges_own_answer_stands_cited_to_the_pooled_pages_that_hold_it():
    tower = source("http://corpus/tower", "Gustave Eiffel's company built the tower for the 1889 World's Fair.")
    backend = ScriptedBackend(lambda request: text("Gustave Eiffel's company"))
    results = [result(0, "Paris", evidence=[tower, LOUVRE]), result(1, "Napoleon", evidence=[EIFFEL])]
    decided = await vote("Who built the Eiffel Tower?", results, backend)
    assert decided.judged and decided.answer == "Gustave Eiffel's company" and decided.agreement == 0.0
    assert decided.cited == (tower.url,) and decided.backers == ()
    assert {g.answer for g in decided.groups} == {"Paris", "Napoleon"}  # the vote itself is kept for the report


async def test_with_no_answer_at_all_the_judge_reads_what_was_fetched():
    backend = ScriptedBackend(lambda request: text("1889"))
    decided = await vote("When was the Eiffel Tower finished?", [result(0, "", evidence=[EIFFEL, LOUVRE])], backend)
    assert decided.answer == "1889" and decided.judged and decided.cited == (EIFFEL.url,)
    nothing_fetched = await vote("When?", [result(0, "")], backend)
    # two calls in all: a lone trajectory's two pages are each read first once, and no evidence, no judge
    assert nothing_fetched.answer == "" and len(backend.requests) == 2


async def test_a_lone_answer_is_checked_by_the_judge():
    backend = ScriptedBackend(lambda request: text("1889"))
    kept = await vote("When was the Eiffel Tower finished?", [result(0, "1889", evidence=[EIFFEL])], backend)
    assert kept.answer == "1889" and kept.judged and kept.backers == (0,) and kept.agreement == 1.0
    replaced = await vote("When was the Eiffel Tower finished?", [result(0, "1887", evidence=[EIFFEL])], backend)
    assert replaced.answer == "1889" and replaced.backers == () and replaced.cited == (EIFFEL.url,)
    prefixed = await vote("When was the Eiffel Tower finished?", [result(0, "1889", evidence=[EIFFEL])],
                          ScriptedBackend(lambda request: text("Answer: **1889**.")))
    assert prefixed.answer == "1889" and prefixed.backers == (0,)
    off_topic = await vote("When was it finished?", [result(0, "1887", evidence=[EIFFEL])],
                           ScriptedBackend(lambda request: text("Yes.")))
    assert off_topic.answer == "1887"  # a judge's "yes" never answers a "when" question
    yes_no = "Were Scott Derrickson and Ed Wood of the same nationality?"
    named = await vote(yes_no, [result(0, "yes", evidence=[EIFFEL])],
                       ScriptedBackend(lambda request: text("Scott Derrickson")))
    assert named.answer == "yes"  # nor a name a yes/no question
    choice = await vote("Was Ed Wood or Scott Derrickson born first?", [result(0, "yes", evidence=[EIFFEL])],
                        ScriptedBackend(lambda request: text("Ed Wood")))
    assert choice.answer == "Ed Wood" and choice.backers == ()  # a choice is no yes/no question


async def test_a_lone_trajectorys_pages_are_each_read_first_once_and_every_reading_votes():
    pages = [source(f"http://corpus/{name}", f"The {name} tower was finished in {year}.")
             for name, year in (("eiffel", 1889), ("tokyo", 1958), ("berlin", 1969), ("blackpool", 1894))]
    # the reading in rank order agrees with the trajectory; the three other orders read another year
    backend = ScriptedBackend(lambda request: text("1887" if request.request_id == "read:0" else "1889"))
    job = await aggregate(job_id="j", question="When was the eiffel tower finished?", mode="answer",
                          results=[result(0, "1887", evidence=pages)], backend=backend)
    firsts = {r.messages[0]["content"].split("\n")[1].split(":")[0] for r in backend.requests}
    assert len(backend.requests) == 4 and len(firsts) == 4  # four pages, each read first once
    assert job.answer == "1889"  # three ballots against two (its answer and the rank-order reading)
    assert job.reads == {0: "1887"} and job.more_reads == ("1889",) * 3
    assert job.to_dict()["more_reads"] == ["1889"] * 3


async def test_the_ballots_winner_is_not_handed_to_an_answer_that_says_more():
    pages = [source(f"http://corpus/{n}", f"Page {n}: the {n} war.") for n in ("first", "second", "korean", "cold")]
    said = {"read:0": "World War I", "read:1": "World War II", "read:2": "World War II", "read:3": "World War II"}
    backend = ScriptedBackend(lambda request: text(said.get(request.request_id, "World War I and World War II")))
    question = "Which war did the regiment fight in?"
    decided = await vote(question, [result(0, "World War I and World War II", evidence=pages)], backend)
    assert decided.answer == "World War II" and decided.backers == ()  # three readings against one ballot each
    # "It was 1887" winning the ballots is still handed to "1887": see the spread-vote test above


async def test_with_no_answer_anywhere_but_one_reading_that_reading_stands():
    pages = [source(f"http://corpus/{name}", f"The {name} tower.") for name in ("eiffel", "tokyo", "berlin")]
    backend = ScriptedBackend(lambda request: text("1889" if request.request_id == "read:1" else "Yes"))
    decided = await vote("When was the eiffel tower finished?", [result(0, "", evidence=pages)], backend)
    assert decided.reads == {0: ""} and decided.more_reads == ("1889", "")  # "yes" answers no "when"
    assert decided.answer == "1889" and decided.judged


async def test_with_min_majority_one_a_lone_answer_stands_without_the_judge():
    backend = ScriptedBackend(lambda request: text("1889"))
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="answer",
                          results=[result(0, "1887", evidence=[EIFFEL])], backend=backend,
                          config=AggregationConfig(min_majority=1))
    assert job.answer == "1887" and not backend.requests
    with pytest.raises(ValueError, match="min_majority"):
        AggregationConfig(min_majority=0)


async def test_a_failed_judge_keeps_the_vote_order():
    def unavailable(request):
        raise LLMError("model endpoint down")

    decided = await vote("When?", [result(0, "1887", confidence=0.2), result(1, "1889", confidence=0.9)],
                         ScriptedBackend(unavailable))
    assert decided.answer == "1889" and decided.backers == (1,)
