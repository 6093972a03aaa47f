"""Tests for rewards.py: reference values of §2 and §7, the official regexes and rouge_score as
reference implementations, adversarial strings, and property tests that nothing raises."""

import math
import random
import re
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

import rewards
from rewards import (PROBLEM_TYPES, accuracy_reward, eval_score, extract_answer, format_reward,
                     mean_relative_accuracy, parse_number)

EGG_GT = "The person cracks an egg into the black frying pan."
EGG_PRED = "He cracks an egg into the pan."


def tagged(text):
    return f"<answer>{text}</answer>"


def acc(prediction, gt, problem_type):
    """Accuracy of a completion that holds `prediction` in answer tags, against the tagged `gt`."""
    completion = f"<think>t</think><answer>{prediction}</answer>"
    return accuracy_reward(completion, tagged(gt), problem_type)


# ---- Reference implementations: the official regexes, rouge_score, a full-table DP, torch MRA ----

def official_extract(text):
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    return match.group(1).strip() if match else ""


def official_format(text):
    match = re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL)
    return 1.0 if match else 0.0


ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def official_rouge_mean(gt, pred):
    scores = ROUGE.score(gt, pred)
    return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3


def full_table_distance(a, b):
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                              table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


def official_mra(pred, gt):
    pred, gt = torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)
    rel = torch.abs(pred - gt) / (torch.abs(gt) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)
    return (rel < (1 - thresholds)).float().mean().item()


# ---- Reference values (notes §2, §7) ----

def test_free_form_reference_values():
    assert acc(EGG_PRED, EGG_GT, "free-form") == pytest.approx(0.648366, abs=1e-6)
    assert acc("A RED balls!", "a red ball", "free-form") == 1.0  # lowercasing and stemming
    assert acc("你好世界", "你好世界", "free-form") == 0.0  # rouge tokens are [a-z0-9] only


def test_ocr_reference_values():
    assert acc("hello word foo", "hello world foo", "OCR") == pytest.approx(2 / 3, abs=1e-4)
    assert acc("total: 42", "Total: 42", "OCR") == 0.5  # case-sensitive
    assert acc("", "", "OCR") == 1.0
    assert acc("x", "", "OCR") == 0.0


def test_ocr_counts_insertions_deletions_and_clips():
    assert acc("a b c d", "a b c", "OCR") == pytest.approx(2 / 3)  # one insertion
    assert acc("a c", "a b c", "OCR") == pytest.approx(2 / 3)  # one deletion
    assert acc("x y z w v", "a b c", "OCR") == 0.0  # WER 5/3, clipped
    assert acc("  a\n b\tc ", "a b c", "OCR") == 1.0  # split on any whitespace


def test_regression_reference_values():
    assert acc("4", "5", "regression") == pytest.approx(0.8)
    assert acc("12", "10", "regression") == pytest.approx(0.8)
    assert acc("5", "2", "regression") == 0.0
    assert acc("0", "0", "regression") == 1.0  # official: 0.0 (1e-9 / 1e-9)
    assert acc("3", "0", "regression") == 0.0
    assert acc("5", "5", "regression") == 1.0  # exactly; official: 0.9999999998
    assert acc("-4", "-5", "regression") == pytest.approx(0.8)
    assert acc("1,000", "1000", "regression") == 1.0  # no decimal-consistency check here


def test_mra_reference_values():
    assert mean_relative_accuracy(4, 5) == 0.6
    assert mean_relative_accuracy(3, 5) == 0.2
    assert mean_relative_accuracy(7, 5) == 0.2
    assert mean_relative_accuracy(2.4, 5) == 0.0
    assert mean_relative_accuracy(0, 0) == 1.0
    assert mean_relative_accuracy(4.4, 5) == 0.8  # rel 0.12: passes the thresholds 0.50 ... 0.85
    # rel = 0.1 sits on the 0.9 boundary. Reference §7 lists 0.8 (exact arithmetic); the official
    # float32 code compares float32(0.1) < float32(1 - float32(0.9)) and passes, so it gives 0.9.
    assert official_mra(4.5, 5.0) == pytest.approx(0.9)
    assert mean_relative_accuracy(4.5, 5) == 0.9


def test_mra_limits_are_the_official_float32_values():
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)
    assert list(rewards._MRA_LIMITS) == (1 - thresholds).tolist()


def test_mra_non_finite_and_overflow():
    for bad in (math.nan, math.inf, -math.inf):
        assert mean_relative_accuracy(bad, 5.0) == 0.0
        assert mean_relative_accuracy(5.0, bad) == 0.0
    assert mean_relative_accuracy(1e39, 1e39) == official_mra(1e39, 1e39) == 0.0  # float32 inf-inf
    assert mean_relative_accuracy(1e39, 5.0) == 0.0


def test_numerical_reference_values():
    assert acc("3.0", "3", "numerical") == 0.0  # decimal-consistency rule
    assert acc("1,000", "1000", "numerical") == 0.0  # a comma counts as a decimal indicator
    assert acc("3.141", "3.14", "numerical") == 1.0  # both round to 3.14
    assert acc("3.14", "3.141", "numerical") == 1.0
    assert acc("42", "42", "numerical") == 1.0
    assert acc("43", "42", "numerical") == 0.0
    assert acc("1,000.5", "1000.5", "numerical") == 1.0  # both have a decimal indicator
    assert acc("1e3", "1000", "numerical") == 1.0  # float() reads scientific notation
    assert acc("forty-two", "42", "numerical") == 0.0
    assert acc("nan", "nan", "numerical") == 0.0
    assert acc("inf", "inf", "numerical") == 0.0


def test_parse_number():
    assert parse_number("1,234,567") == 1234567.0
    assert parse_number(" 2.5\n") == 2.5
    assert parse_number("1e3") == 1000.0
    assert parse_number("-0.5") == -0.5
    assert parse_number("١٢") == 12.0  # float() accepts Unicode digits
    for bad in ("", "  ", "abc", "1.2.3", "nan", "NaN", "inf", "-Infinity", "1e999", "4 apples"):
        assert parse_number(bad) is None, bad


# ---- Multiple choice and answer extraction ----

def test_multiple_choice_is_exact_and_case_sensitive():
    assert acc("B", "B", "multiple choice") == 1.0
    assert acc("  B \n", "B", "multiple choice") == 1.0  # stripped
    for wrong in ("B.", "(B)", "b", "A or B", "B. red ball", ""):
        assert acc(wrong, "B", "multiple choice") == 0.0, wrong


def test_extract_answer_cases():
    assert extract_answer("<think>x</think><answer> B </answer>") == "B"
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer("<answer>A</answer><answer>B</answer>") == "A"  # the first block wins
    assert extract_answer("<answer>A") == ""  # unclosed
    assert extract_answer("A</answer>") == ""
    assert extract_answer("<answer>\n  multi\nline \t</answer>") == "multi\nline"
    assert extract_answer("<answer><answer>X</answer>") == "<answer>X"  # leftmost opening tag
    assert extract_answer("<answer>   \u3000 </answer>") == ""  # Unicode whitespace only


def test_solution_without_tags_is_the_ground_truth():
    assert accuracy_reward(tagged("B"), "  B\n", "multiple choice") == 1.0
    assert accuracy_reward(tagged("B"), tagged(""), "multiple choice") == 0.0  # tags, empty GT


def test_two_answer_blocks_and_text_after_answer():
    completion = "<think>t</think><answer>A</answer><answer>B</answer>"
    assert accuracy_reward(completion, tagged("A"), "multiple choice") == 1.0
    trailing = "<think>t</think><answer>C</answer> Hope this helps."
    assert format_reward(trailing) == 0.0
    assert accuracy_reward(trailing, tagged("C"), "multiple choice") == 1.0


def test_missing_tags_score_zero_in_training():
    assert accuracy_reward("B", tagged("B"), "multiple choice") == 0.0
    assert accuracy_reward("<answer>B", tagged("B"), "multiple choice") == 0.0


def test_unknown_problem_type_raises():
    for bad in ("Multiple Choice", "mcq", ""):
        with pytest.raises(ValueError, match="rewards.py accuracy_reward: problem_type"):
            accuracy_reward(tagged("B"), tagged("B"), bad)
        with pytest.raises(ValueError, match="rewards.py eval_score: problem_type"):
            eval_score(tagged("B"), tagged("B"), bad)


# ---- Format reward ----

def test_format_reward_cases():
    assert format_reward("<think>a</think><answer>B</answer>") == 1.0
    assert format_reward("<think></think>\n\n<answer></answer>") == 1.0
    assert format_reward("<think>a\nb</think> \n<answer>c\nd</answer>") == 1.0
    assert format_reward("<think>a</think><answer>B</answer>\n") == 0.0  # trailing newline
    assert format_reward("Sure. <think>a</think><answer>B</answer>") == 0.0  # leading text
    assert format_reward("<think>a</think> x <answer>B</answer>") == 0.0
    assert format_reward("<answer>B</answer>") == 0.0
    assert format_reward("<think>a</think>") == 0.0
    assert format_reward("<think>a</think><answer>") == 0.0
    assert format_reward("<think></think><answer></answer>") == 1.0  # shortest match
    two = "<think>1</think><answer>2</answer><think>3</think><answer>4</answer>"
    assert format_reward(two) == 1.0


# ---- eval_score ----

def test_eval_score_fallback_and_types():
    assert eval_score("B", tagged("B"), "multiple choice") == ("B", 1.0)
    assert eval_score("  B\n", tagged("B"), "multiple choice") == ("B", 1.0)
    empty = "<answer></answer>"
    assert eval_score(empty, tagged("B"), "multiple choice") == (empty, 0.0)
    assert eval_score("<think>x</think><answer>C</answer>", tagged("B"), "multiple choice") \
        == ("C", 0.0)
    assert eval_score(tagged("4"), tagged("5"), "regression") == ("4", 0.6)
    assert eval_score("about four", tagged("5"), "regression") == ("about four", 0.0)
    assert eval_score(tagged("3.0"), tagged("3"), "numerical") == ("3.0", 0.0)
    egg = eval_score(tagged(EGG_PRED), tagged(EGG_GT), "free-form")[1]
    assert egg == pytest.approx(0.648366, abs=1e-6)
    assert eval_score("hello word foo", tagged("hello world foo"), "OCR")[1] == pytest.approx(2 / 3)


# ---- Agreement with the reference implementations ----

WORDS = ["the", "a", "run", "running", "runs", "egg", "eggs", "pan", "Pan!", "42", "x", "ball",
         "balls", "你"]
word_lists = st.lists(st.sampled_from(WORDS), max_size=12)
FRAGMENTS = ["<answer>", "</answer>", "<think>", "</think>", " ", "\n", "\t", "\u3000", "\x1c", "A",
             "3.5",
             "1,000", "nan", "<", ">", "/", "answer", "é", "你"]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
any_text = st.one_of(st.text(max_size=40), fragment_text,
                     st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                              max_size=10).map("".join))


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_extract_answer_matches_official_regex(text):
    assert extract_answer(text) == official_extract(text)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_format_reward_matches_official_regex(text):
    assert format_reward(text) == official_format(text)
    framed = "<think>" + text + "</answer>"  # reaches the inner loop of the linear matcher
    assert format_reward(framed) == official_format(framed)


@settings(max_examples=200, deadline=None)
@given(word_lists, word_lists)
def test_free_form_matches_rouge_score(gt_words, pred_words):
    gt, pred = " ".join(gt_words), " ".join(pred_words)
    expected = min(1.0, official_rouge_mean(gt, pred))
    assert acc(pred, gt, "free-form") == pytest.approx(expected, abs=1e-12)


def test_free_form_matches_rouge_score_on_long_texts():
    rng = random.Random(0)
    for _ in range(5):
        gt = " ".join(rng.choices(WORDS, k=rng.randint(50, 150)))
        pred = " ".join(rng.choices(WORDS, k=rng.randint(50, 300)))
        assert acc(pred, gt, "free-form") == pytest.approx(official_rouge_mean(gt, pred), abs=1e-12)


def test_texts_are_read_up_to_max_chars():
    """R7: the regexes see the first MAX_CHARS characters; the official code reads on (and takes
    minutes on a 1 MB run of whitespace)."""
    think = "<think>" + "x" * (rewards.MAX_CHARS - len("<think></think><answer>B</answer>"))
    fits, longer = think + "</think><answer>B</answer>", think + "</think> <answer>B</answer>"
    assert len(fits) == rewards.MAX_CHARS
    assert format_reward(fits) == 1.0 == official_format(fits)
    assert format_reward(longer) == 0.0 < official_format(longer)
    assert extract_answer(fits) == "B"
    assert extract_answer(longer) == "" != official_extract(longer)
    assert accuracy_reward(longer, tagged("B"), "multiple choice") == 0.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abc"), max_size=12), st.lists(st.sampled_from("abc"), max_size=12))
def test_ocr_matches_full_table_wer(ref, hyp):
    expected = min(1.0, max(0.0, 1.0 - full_table_distance(ref, hyp) / max(1, len(ref))))
    assert acc(" ".join(hyp), " ".join(ref), "OCR") == pytest.approx(expected, abs=1e-12)
    assert rewards._edit_distance(ref, hyp) == full_table_distance(ref, hyp)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=300, deadline=None)
@given(finite, finite)
def test_mra_matches_official_torch_code(pred, gt):
    assert mean_relative_accuracy(pred, gt) == pytest.approx(official_mra(pred, gt), abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6), st.integers(0, 40))
def test_mra_matches_official_near_every_boundary(gt, step):
    pred = gt * (1 + 0.025 * (step - 20))  # rel near the multiples of 0.025, including the limits
    assert mean_relative_accuracy(pred, gt) == pytest.approx(official_mra(pred, gt), abs=1e-6)


# ---- Robustness: nothing raises, everything lies in [0, 1] ----

@settings(max_examples=300, deadline=None)
@given(any_text, any_text, st.sampled_from(PROBLEM_TYPES))
def test_rewards_never_raise_and_stay_in_unit_interval(completion, solution, problem_type):
    for score in (accuracy_reward(completion, solution, problem_type), format_reward(completion),
                  eval_score(completion, solution, problem_type)[1]):
        assert isinstance(score, float) and 0.0 <= score <= 1.0


@settings(max_examples=300, deadline=None)
@given(finite, finite)
def test_mra_in_unit_interval(pred, gt):
    assert 0.0 <= mean_relative_accuracy(pred, gt) <= 1.0


def one_megabyte_completions():
    rng = random.Random(1)
    words = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9)))
                     for _ in range(200_000))
    mb = 1_000_000
    return {
        "random words": "<think>x</think><answer>" + words[:mb] + "</answer>",
        "gt words repeated": "<answer>" + ("the egg pan " * 90_000)[:mb] + "</answer>",
        "digits": "<answer>" + "9" * mb + "</answer>",
        "spaces inside answer": "<answer>x" + " " * mb + "y</answer>",
        "opening tags": "<answer>" * (mb // 8) + "</answer>",
        "think and answer tags": "<think>" + "</think><answer>" * (mb // 16) + "x",
        "unicode": "<answer>" + "é你\u3000" * (mb // 3) + "</answer>",
    }


@pytest.mark.parametrize("problem_type", PROBLEM_TYPES)
def test_one_megabyte_completions(problem_type):
    for name, completion in one_megabyte_completions().items():
        for solution in (tagged(EGG_GT), tagged("3.5"), tagged("")):
            for score in (accuracy_reward(completion, solution, problem_type),
                          format_reward(completion),
                          eval_score(completion, solution, problem_type)[1]):
                assert isinstance(score, float) and 0.0 <= score <= 1.0, (name, problem_type)


def test_whitespace_only_and_empty_inputs():
    for problem_type in PROBLEM_TYPES:
        for completion in ("", "   ", "\n\t", tagged("   ")):
            assert 0.0 <= accuracy_reward(completion, tagged("B"), problem_type) <= 1.0
            assert 0.0 <= eval_score(completion, "", problem_type)[1] <= 1.0
