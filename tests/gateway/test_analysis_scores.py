"""As units: how best_of picks among analyzed candidates, and how captions are timed and cut."""

from __future__ import annotations

from services.gateway.generation.analysis import best, score
from services.gateway.generation.captions import cues, srt, webvtt, word_times
from voice.gateway.v1 import generations_pb2


def analysis(word_error_rate: float, **similarity: float) -> generations_pb2.GenerationAnalysis:
    return generations_pb2.GenerationAnalysis(word_error_rate=word_error_rate, voice_similarity=similarity)


def test_the_score_is_the_mean_similarity_less_the_error_rate():
    assert score(analysis(0.25)) == -0.25
    assert score(analysis(0.1, S1=0.9, S2=0.7)) == 0.8 - 0.1


def test_the_best_scoring_candidate_is_chosen_and_every_one_is_kept():
    chosen, result = best([11, 12, 13], [analysis(0.5, S1=0.9), analysis(0.1, S1=0.85), None])
    assert chosen == 1
    assert result.word_error_rate == 0.1  # the chosen one's analysis
    assert [candidate.seed for candidate in result.candidates] == [11, 12, 13]
    assert [candidate.chosen for candidate in result.candidates] == [False, True, False]
    assert [candidate.unanalyzed for candidate in result.candidates] == [False, False, True]
    assert result.candidates[0].score == 0.4
    assert dict(result.candidates[1].voice_similarity) == {"S1": 0.85}


def test_without_any_analysis_the_first_candidate_is_returned():
    chosen, result = best([5, 6], [None, None])
    assert chosen == 0
    assert [candidate.chosen for candidate in result.candidates] == [True, False]
    assert not result.words


def word(text: str, speaker: str = "S1", start: float = 0.0, end: float = 0.0) -> generations_pb2.TimedWord:
    return generations_pb2.TimedWord(text=text, speaker=speaker, heard=end > 0, start_seconds=start, end_seconds=end)


def test_words_not_heard_are_timed_between_their_heard_neighbours_by_their_length():
    words = [word("Hi", start=1, end=2), word("a"), word("bcd"), word("ok", start=4, end=5), word("end")]
    assert word_times(words, duration=7) == [(1, 2), (2, 2.5), (2.5, 4), (4, 5), (5, 7)]


def test_a_cue_is_a_sentence_of_one_speakers_turn():
    timed = generations_pb2.GenerationAnalysis(words=[
        word("Hello!", "S1", 0.1, 0.5), word("Welcome", "S1", 0.6, 1.0), word("home.", "S1", 1.0, 1.4),
        word("Thanks", "S2", 2.0, 2.4), word("a", "S2"), word("lot", "S2", 2.6, 3.0),
    ])  # fmt: skip
    assert [(cue.speaker, cue.text, cue.start, cue.end) for cue in cues(timed, 3.2)] == [
        ("S1", "Hello!", 0.1, 0.5),
        ("S1", "Welcome home.", 0.6, 1.4),
        ("S2", "Thanks a lot", 2.0, 3.0),
    ]
    assert webvtt(timed, 3.2).startswith("WEBVTT\n\n1\n00:00:00.100 --> 00:00:00.500\n<v S1>Hello!</v>\n\n")
    assert "3\n00:00:02,000 --> 00:00:03,000\n[S2] Thanks a lot\n" in srt(timed, 3.2)


def test_a_long_sentence_is_cut_into_cues_of_at_most_twelve_words_and_markup_is_escaped():
    words = [word(f"w{index}", start=index, end=index + 0.5) for index in range(30)] + [word("<b>&", start=30, end=31)]
    found = cues(generations_pb2.GenerationAnalysis(words=words), 31)
    assert [len(cue.text.split()) for cue in found] == [12, 12, 7]
    assert "w11 w12" not in " | ".join(cue.text for cue in found)
    assert "&lt;b&gt;&amp;" in webvtt(generations_pb2.GenerationAnalysis(words=words), 31)
