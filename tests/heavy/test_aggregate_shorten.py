"""The answers as they reach the vote (heavy/aggregate/shorten.py): a long answer or reading cut short to the phrase
that answers, an answer restating the question (or the question itself) never voting, a question asking for a number
not answered without one, yes and no without the model, a short form the answer does not say not voted. The vote and
the judge: test_aggregate.py."""

import pytest

from heavy.aggregate import vote
from heavy.aggregate.evidence import token_f1
from heavy.aggregate.shorten import asks_number, drawn_from, off_kind, phrase_around_question, restates
from tests.heavy.fakes import ScriptedBackend, text
from tests.heavy.test_aggregate import EIFFEL, result

pytestmark = pytest.mark.anyio


async def test_an_answer_restating_the_question_is_no_answer_unless_the_question_offers_it():
    question = "Who was known by his stage name Aladin and helped organizations improve their performance?"
    assert restates(question, "Aladin") and not restates(question, "Eenasul Fateh")
    assert not restates("Who is older, Annie Morton or Terry Richardson?", "Terry Richardson")
    misspelt = "The Livesey Hal War Memorial commemorates the fallen of which war, that had over 60 million casualties?"
    assert restates(misspelt, "Livesey Hall War Memorial") and not restates(misspelt, "World War II")
    assert not restates("Which team won the 1992 final?", "1993")  # numbers are never misspelt words
    assert not restates("When did the 199 bus start?", "1992")
    backend = ScriptedBackend(lambda request: text("Aladin"))  # every reading restates the question too
    decided = await vote(question, [result(0, "Aladin", evidence=[EIFFEL]), result(1, "Eenasul Fateh")], backend)
    assert decided.answer == "Eenasul Fateh" and [g.answer for g in decided.groups] == ["Eenasul Fateh"]
    assert set(decided.reads.values()) == {""}


async def test_the_question_itself_given_as_an_answer_never_votes():
    question = "Hayden is a singer-songwriter from Canada, but where does Buck-Tick hail from?"
    answers = [question, question, "Hayden is a singer-songwriter from Canada", "Fujioka, Gunma"]
    backend = ScriptedBackend(lambda request: text(""))  # no reading answers either
    decided = await vote(question, [result(i, a, evidence=[EIFFEL]) for i, a in enumerate(answers)], backend)
    assert decided.answer == "Fujioka, Gunma" and [g.answer for g in decided.groups] == ["Fujioka, Gunma"]


async def test_an_escaped_entity_does_not_hide_that_an_answer_restates_the_question():
    question = 'What is the name for the adventure in "Tunnels and Trolls", a game designed by Ken St. Andre?'
    answers = ["Tunnels &amp; Trolls", "Tunnels &amp; Trolls", "Tunnels & Trolls", "Arena of Khazan"]
    readings = {"read:0": "Tunnels &amp; Trolls", "read:3": "Arena of Khazan"}
    backend = ScriptedBackend(lambda request: text(readings.get(request.request_id, "")))
    decided = await vote(question, [result(i, a, evidence=[EIFFEL]) for i, a in enumerate(answers)], backend)
    assert decided.answer == "Arena of Khazan" and [g.answer for g in decided.groups] == ["Arena of Khazan"]
    assert decided.reads[0] == ""  # the judge's escaped reading restates it too


async def test_a_question_asking_for_a_number_is_not_answered_without_one():
    question = "Brown State Fishing Lake is in a county that has a population of how many inhabitants ?"
    assert asks_number(question) and asks_number("The civil war ended when ?") and asks_number("When was it out?")
    assert not asks_number("Who is older, Annie Morton or Terry Richardson?")
    assert off_kind(question, "Brown County") and not off_kind(question, "9,984") and not off_kind(question, "ten")
    backend = ScriptedBackend(lambda request: text("Brown County, Kansas"))  # every reading names the county
    decided = await vote(question, [result(0, "Brown County", evidence=[EIFFEL]), result(1, "9,984")], backend)
    assert decided.answer == "9,984" and [g.answer for g in decided.groups] == ["9,984"]
    assert set(decided.reads.values()) == {""}


async def test_long_answers_are_shortened_before_the_vote():
    def script(request):
        asked = request.messages[-1]["content"]
        return text("1889" if request.request_id.startswith("shorten:") and "by Eiffel's company" in asked else "??")

    backend = ScriptedBackend(script)
    results = [result(0, "1889"), result(1, "The tower was finished in the year 1889 by Eiffel's company."),
               result(2, "1887")]
    decided = await vote("When was it finished?", results, backend)
    assert decided.answer == "1889" and decided.groups[0].members == (0, 1) and not decided.judged
    assert [r.request_id for r in backend.requests] == ["shorten:1"]  # short answers are not sent
    assert decided.usage.total_tokens == 110


async def test_a_reading_written_as_a_sentence_is_cut_short_and_not_taken_for_an_answer_restating_the_question():
    question = "What position was held by the woman who portrayed Corliss Archer?"
    restated = "The woman who portrayed Corliss Archer was the Governor"
    read = "The woman who portrayed Corliss Archer was Shirley Temple"
    assert token_f1(read, restated, restated=question) == 0.0  # they share the question, not the answer
    assert token_f1("Ed Wood", "Ed Wood", restated="Was Ed Wood or Scott Derrickson born first?") == 1.0
    replies = {"shorten:0": restated, "read:0": read, "shorten:read:0": "Shirley Temple"}
    backend = ScriptedBackend(lambda request: text(replies[request.request_id]))
    decided = await vote(question, [result(0, restated, evidence=[EIFFEL])], backend)
    assert decided.answer == "Shirley Temple" and decided.backers == ()


async def test_a_sentence_the_model_cannot_cut_votes_with_the_phrase_it_adds_to_the_restated_question():
    question = "Which British jet bomber was used in the South West Pacific theatre of World War II?"
    sentence = "The English Electric Canberra was used in the South West Pacific theatre of World War II"
    backend = ScriptedBackend(lambda request: text(
        sentence if request.request_id.startswith(("read:", "shorten:")) else "??"))  # the model echoes it back
    results = [result(i, "", evidence=[EIFFEL]) for i in range(3)] + [result(3, "Avro Lincoln", evidence=[EIFFEL])]
    decided = await vote(question, results, backend)
    assert decided.reads == dict.fromkeys(range(4), "English Electric Canberra")
    assert decided.answer == "English Electric Canberra"
    assert phrase_around_question("Who was known as Aladin?", "Eenasul Fateh, also known as Aladin, is a magician") \
        is None  # two runs of new words around the question's: no one phrase
    assert phrase_around_question(question, "It was a major theatre of the war between the Allies and Japan") is None
    assert phrase_around_question("What did the battle secure?", "Yes, the battle secured it") is None  # wrong kind
    assert phrase_around_question("When was the bridge opened?", "The bridge was opened by the King") is None


async def test_a_short_form_the_answer_does_not_say_is_not_voted():
    long = "The woman who portrayed Corliss Archer held a government position as a judge in the United States."
    backend = ScriptedBackend(lambda request: text("teacher of the deaf"))  # an example's answer, copied
    decided = await vote("What position did she hold?", [result(0, long), result(1, "Chief of Protocol")], backend)
    assert {g.answer for g in decided.groups} == {long, "Chief of Protocol"}
    assert drawn_from("a judge", long) and drawn_from("yes", long) and not drawn_from("teacher of the deaf", long)


async def test_yes_no_answers_need_no_model_and_yes_never_answers_a_wh_question():
    backend = ScriptedBackend(lambda request: text("Yes."))
    results = [result(0, "Yes, both of them were American film directors."), result(1, "no")]
    decided = await vote("Were Scott Derrickson and Ed Wood of the same nationality?", results, backend)
    assert {g.answer for g in decided.groups} == {"yes", "no"} and not [
        r for r in backend.requests if r.request_id.startswith("shorten:")]
    long = "The woman who played the part later served as the Chief of Protocol of the United States."
    decided = await vote("What government position did she hold?", [result(0, long)], backend)
    assert decided.answer == long  # the model's "Yes." is refused; the long answer still votes
    decided = await vote("Who directed Sinister?", [result(0, "Yes"), result(1, "Scott Derrickson")], backend)
    assert decided.answer == "Scott Derrickson" and decided.agreement == 1.0  # a bare "Yes" is not an answer here
