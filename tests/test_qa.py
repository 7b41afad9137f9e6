"""Extractive QA windows (labels round-trip the gold text through the offsets) and post-processing (the best legal
span over a question's windows), on hand-built windows with hand-worked scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilbench.data.qa import NO_ANSWER, QAWindows, encode_qa, window_labels
from distilbench.data.qa_answers import best_answers, score_answers
from distilbench.data.qa_tasks import Answer, QAExample
from distilbench.data.tasks import get_task, load_split
from distilbench.errors import UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer():
    from distilbench.models.loading import load_tokenizer

    return load_tokenizer("minilm-l6")  # BERT WordPiece, fast, [CLS] first


def example(idx: int, context: str, answer: str | None, question: str = "Which city hosted the final game?") -> QAExample:
    answers = (Answer(answer, context.index(answer)),) if answer else ()
    return QAExample(idx, f"q{idx}", "article", context, question, answers)


FILLER = " ".join(f"Sentence number {i} talks about weather in the valley." for i in range(12))
LONG = f"{FILLER} The final game was hosted by Santa Clara in California. {FILLER}"


# --------------------------------------------------------------------------- windows


def test_windows_overlap_by_doc_stride_and_round_trip_the_answer(tokenizer):
    windows = encode_qa(tokenizer, [example(0, LONG, "Santa Clara")], max_length=64, doc_stride=16,
                        max_question_length=16)
    assert len(windows) > 3 and set(windows.example_of) == {0}
    assert max(windows.lengths()) <= 64
    holding = [w for w in range(len(windows)) if windows.start_positions[w] != NO_ANSWER]
    assert holding, "no window holds the answer"
    for w in range(len(windows)):
        assert windows.input_ids[w][0] == tokenizer.cls_token_id
        if w in holding:
            assert windows.answer_text(w) == "Santa Clara"  # from the labels through the offsets, character-exact
            assert windows.context_spans[w][windows.start_positions[w]] is not None
        else:
            assert (windows.start_positions[w], windows.end_positions[w]) == (0, 0)
    for w in range(len(windows) - 1):  # consecutive windows share exactly doc_stride context tokens
        left = [s for s in windows.context_spans[w] if s is not None]
        right = [s for s in windows.context_spans[w + 1] if s is not None]
        assert left[-16:] == right[:16]


def test_an_unanswerable_question_points_every_window_at_cls(tokenizer):
    windows = encode_qa(tokenizer, [example(0, LONG, "Santa Clara"), example(1, LONG, None)], 64, 16, 16)
    second = windows.windows_of(1)
    assert second and all(windows.start_positions[w] == windows.end_positions[w] == 0 for w in second)
    assert windows.example_of == sorted(windows.example_of)  # a question's windows are consecutive


def test_an_answer_cut_by_a_window_edge_is_not_labelled_there():
    # tokens: [CLS] q [SEP] "in"(0,2) "santa"(3,8) [SEP]: the window ends inside "Santa Clara" (3..14)
    spans = [None, None, None, (0, 2), (3, 8), None]
    assert window_labels(spans, example(0, "in Santa Clara", "Santa Clara")) == (0, 0)
    full = [None, None, None, (0, 2), (3, 8), (9, 14), None]
    assert window_labels(full, example(0, "in Santa Clara", "Santa Clara")) == (4, 5)
    # an answer starting inside a token takes the whole token
    assert window_labels(full, QAExample(0, "q", "t", "in Santa Clara", "q", (Answer("anta", 4),))) == (4, 4)


def test_long_questions_are_cut_to_max_question_length(tokenizer):
    question = " ".join(["what"] * 50) + "?"
    windows = encode_qa(tokenizer, [example(0, LONG, "Santa Clara", question)], 64, 16, max_question_length=8)
    for ids in windows.input_ids:
        assert ids.index(tokenizer.sep_token_id) - 1 == 8  # [CLS] then 8 question tokens then [SEP]


@pytest.mark.parametrize("max_length, stride, max_q, message", [
    (64, 64, 16, "doc_stride 64 must be .* below max_length 64"),
    (64, 50, 16, "doc_stride 50 must be below the context tokens a window holds"),
    (64, 16, 64, "max_question_length 64 must be"),
])
def test_impossible_windows_are_refused(tokenizer, max_length, stride, max_q, message):
    with pytest.raises(UsageError, match=message):
        encode_qa(tokenizer, [example(0, LONG, "Santa Clara")], max_length, stride, max_q)


def test_a_slow_tokenizer_is_refused():
    class Slow:
        is_fast, name_or_path = False, "slow-one"

    with pytest.raises(UsageError, match="fast tokenizer .* slow-one"):
        encode_qa(Slow(), [example(0, LONG, "Santa Clara")], 64, 16, 16)


@pytest.mark.skipif(not (SHARED / "squad-v1.1").is_dir(), reason="SQuAD v1.1 dev not found in ../shared/data")
def test_real_squad_windows_round_trip_the_gold_answers(tokenizer):
    dev = load_split(get_task("squad-devsplit"), "dev", SHARED)[:300]
    windows = encode_qa(tokenizer, dev, max_length=128, doc_stride=32, max_question_length=32)
    assert len(windows) > len(dev)  # 128-token windows split most paragraphs
    exact = labelled_windows = 0
    for position, e in enumerate(dev):
        labelled = [w for w in windows.windows_of(position) if windows.start_positions[w] != NO_ANSWER]
        assert labelled, f"{e.qid}: no window holds its answer"
        for w in labelled:
            got = windows.answer_text(w)
            assert e.answers[0].text in got  # the labelled tokens cover the answer: whole tokens, never less
            exact += got == e.answers[0].text
            labelled_windows += 1
    # only answers that end inside a word ("Japan" of "Japanese") come back longer: 2 of 2,481 windows on the whole
    # squad-devsplit test part with 384-token windows
    assert exact >= 0.98 * labelled_windows


# --------------------------------------------------------------------------- post-processing

CTX = "abc def ghi jkl"


def two_windows(answer: str | None = "ghi jkl") -> QAWindows:
    """One question, two windows over CTX: [CLS] q [SEP] abc def ghi [SEP] and [CLS] q [SEP] ghi jkl [SEP]."""
    spans = [[None, None, None, (0, 3), (4, 7), (8, 11), None], [None, None, None, (8, 11), (12, 15), None]]
    ex = QAExample(0, "q0", "t", CTX, "q", (Answer(answer, CTX.index(answer)),) if answer else ())
    return QAWindows([ex], [[101, 5, 102, 6, 7, 8, 102], [101, 5, 102, 8, 9, 102]], None, [0, 0], spans,
                     [0, 0], [0, 0], 0)


PAD = 100.0  # padding past a window's length: never a candidate, however high
#                     CLS  q    SEP  abc  def  ghi  SEP
W0_START = np.array([1.0, 9.0, 0.0, 1.5, 3.0, 0.0, 0.0, PAD])
W0_END = np.array([1.0, 9.0, 0.0, 4.0, 1.0, 2.0, 0.0, PAD])
#                     CLS  q    SEP  ghi  jkl  SEP
W1_START = np.array([3.0, 0.0, 0.0, 2.0, 1.0, 0.0, PAD, PAD])
W1_END = np.array([4.0, 0.0, 0.0, 0.5, 4.4, 0.0, PAD, PAD])


def test_best_legal_span_across_windows():
    # window 0: the question token (9 + 9) and "def".."abc" (end before start, 3 + 4) are illegal; best legal
    # "abc" 1.5 + 4 = 5.5. Window 1: "ghi jkl" 2 + 4.4 = 6.4 wins over all.
    [p] = best_answers(two_windows(), [W0_START, W1_START], [W0_END, W1_END], n_best=20, max_answer_length=30)
    assert (p.qid, p.text) == ("q0", "ghi jkl") and p.candidates[0].score == pytest.approx(6.4)
    assert p.candidates[0].window == 1 and (p.candidates[0].start, p.candidates[0].end) == (8, 15)
    texts = [c.text for c in p.candidates]
    assert texts[:3] == ["ghi jkl", "abc", "jkl"]  # 6.4, 5.5, then "jkl" 1 + 4.4 = 5.4 above "def ghi" 3 + 2 = 5.0
    assert len(texts) == len(set(texts))  # "ghi" is in both windows: counted once, with its higher score
    ghi = next(c for c in p.candidates if c.text == "ghi")
    assert ghi.score == pytest.approx(2.5) and ghi.window == 1  # window 1's 2 + 0.5 beats window 0's 0 + 2
    assert "def abc" not in texts and all(c.start < c.end for c in p.candidates)


def test_too_long_spans_and_n_best_limits():
    [p] = best_answers(two_windows(), [W0_START, W1_START], [W0_END, W1_END], n_best=20, max_answer_length=1)
    assert p.text == "abc" and all(" " not in c.text for c in p.candidates)  # "ghi jkl" has 2 tokens
    [p] = best_answers(two_windows(), [W0_START, W1_START], [W0_END, W1_END], n_best=2, max_answer_length=30)
    # window 0 pairs starts {def, abc} with ends {abc, ghi}; window 1 starts {ghi, jkl} with ends {jkl, ghi}
    assert [c.text for c in p.candidates] == ["ghi jkl", "abc"]


def test_no_answer_score_is_the_lowest_cls_score_and_the_threshold_decides():
    [p] = best_answers(two_windows(), [W0_START, W1_START], [W0_END, W1_END])
    assert p.null_score == pytest.approx(2.0)  # min(1 + 1, 3 + 4)
    assert p.null_margin == pytest.approx(2.0 - 6.4)
    assert p.answer(None) == p.answer(0.0) == "ghi jkl"
    assert p.answer(-5.0) == ""  # -4.4 > -5: no answer


def test_score_answers_uses_the_task_version():
    windows = two_windows()
    preds = best_answers(windows, [W0_START, W1_START], [W0_END, W1_END])
    v1 = score_answers(get_task("squad"), windows.examples, preds)
    assert v1 == {"exact": 1.0, "f1": 1.0, "score": 1.0}
    unanswerable = two_windows(answer=None).examples
    v2 = score_answers(get_task("squad_v2"), unanswerable, preds)  # margin -4.4 <= 0: answered, wrongly
    assert v2["exact"] == 0.0 and v2["NoAns_exact"] == 0.0 and v2["score"] == v2["f1"] == 0.0
    assert v2["best_exact"] == 1.0 and v2["best_exact_thresh"] == 0.0  # answering nothing would be right


def test_oracle_scores_on_real_windows_give_back_every_gold_answer(tokenizer):
    """Scores peaked at each window's labels (and at CLS where the window lacks the answer): post-processing across
    the overlapping windows must return exactly the gold texts, so EM = F1 = 1."""
    examples = [example(0, LONG, "Santa Clara"), example(1, LONG, "valley", "Where is the weather?"),
                example(2, LONG, "California", "Which state?")]
    windows = encode_qa(tokenizer, examples, 64, 16, 16)
    start, end = [], []
    for w in range(len(windows)):
        n = len(windows.input_ids[w])
        s, e = np.zeros(n), np.zeros(n)
        s[windows.start_positions[w]] += 5.0
        e[windows.end_positions[w]] += 5.0
        start.append(s)
        end.append(e)
    preds = best_answers(windows, start, end, n_best=5, max_answer_length=10)
    assert [p.text for p in preds] == [e.answers[0].text for e in examples]
    assert score_answers(get_task("squad"), examples, preds) == {"exact": 1.0, "f1": 1.0, "score": 1.0}
