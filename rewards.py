"""Video-R1's rule rewards: pure functions from strings to scores in [0, 1] (notes §2, §7).

The official reward, read as it is: the answer is the first `<answer>\\s*(.*?)\\s*</answer>` match,
the format is a full match of `<think>.*?</think>\\s*<answer>.*?</answer>` (both DOTALL), and
accuracy has one formula per problem type: multiple choice (exact), numerical (round to 2
places), OCR (1 − WER), free-form (mean ROUGE-1/2/L F of rouge_score), regression (1 − rel).
Eval scores regression with VSI-Bench's MRA instead. Nothing here touches a model, a file or the
console; the one error is the ValueError for an unknown problem type.

Cut: the official code's printing and its try/except around each score (no input raises here).
Departures (docs/departures.md; the ID stands at the line):
  R1  regression: 1 - |p - g| / |g|, so an exact answer scores 1.0 (the code: 0.9999999998)
  R2  regression with g = 0: p = 0 scores 1.0, anything else 0.0 (the code: always 0)
  R3  an unknown problem type raises ValueError (the code scores it 0.0 silently)
  R4  a solution without <answer> tags is its own ground truth (the code compares against "")
  R5  eval scores OCR and free-form with the training accuracy (the code: 0; no benchmark has them)
  R6  MRA is passes / 10 as a Python float (the code: a float32 mean); the comparisons stay float32
  R7  texts are read up to MAX_CHARS characters (the regexes and ROUGE are quadratic beyond)
  R8  the answer search stops at the last </answer> (same result; no rescans of unclosed tags)
  R9  nothing is printed (the code prints when a number does not parse)
  R10 "nan" and "inf" are not numbers (score 0)
"""

import math
import re
import struct

from rouge_score import rouge_scorer

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)            # the official regexes
FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
# R7: a completion of 1024 tokens is ~5k characters; on a 1 MB text the regexes (whitespace runs)
# and ROUGE's LCS table would take minutes.
MAX_CHARS = 32_768
# 1 - torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=float32), as float32: the official MRA limits.
_MRA_LIMITS = (0.5, 0.44999998807907104, 0.3999999761581421, 0.3500000238418579,
               0.30000001192092896, 0.25, 0.19999998807907104, 0.1499999761581421,
               0.10000002384185791, 0.050000011920928955)


def _first_answer(text: str) -> str | None:
    text = text[:MAX_CHARS]                                                     # R7
    end = text.rfind("</answer>") + len("</answer>")    # R8: no match ends later (same result)
    match = ANSWER.search(text, 0, end) if end >= len("</answer>") else None
    return match.group(1).strip() if match else None


def extract_answer(text: str) -> str:
    """The stripped first `<answer>` block of a completion or solution; "" when there is none."""
    found = _first_answer(text)
    return "" if found is None else found


def _ground_truth(solution: str) -> str:
    """The GT of a dataset solution: its answer block, or the whole solution without tags (R4)."""
    found = _first_answer(solution)
    return solution.strip() if found is None else found


def parse_number(text: str) -> float | None:
    """The official numeric normalisation: drop every ",", then float(); None if that fails."""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None                             # R10: no nan/inf


def _numerical_score(pred: str, gt: str) -> float:
    """1.0 iff both parse and agree to 2 decimals, with the same decimal indicator."""
    if ("." in gt or "," in gt) != ("." in pred or "," in pred):
        return 0.0                          # "3.0" vs "3" and "1,000" vs "1000" score 0, officially
    p, g = parse_number(pred), parse_number(gt)
    if p is None or g is None:
        return 0.0
    return 1.0 if round(g, 2) == round(p, 2) else 0.0


def _regression_score(pred: str, gt: str) -> float:
    """1 - |p - g| / |g| clipped to [0, 1]; 0.0 when either does not parse."""
    p, g = parse_number(pred), parse_number(gt)
    if p is None or g is None:
        return 0.0
    if p == g:
        return 1.0                                                              # R1, R2
    if g == 0.0:
        return 0.0                                                              # R2
    return min(1.0, max(0.0, 1.0 - abs(p - g) / abs(g)))   # an overflow to inf clips to 0


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance, unit costs, two rows of the DP table."""
    previous = list(range(len(hyp) + 1))                    # distances from ref[:0] to hyp[:j]
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return previous[-1]


def _ocr_score(pred: str, gt: str) -> float:
    """1 - WER clipped to [0, 1], WER = distance(gt words, pred words) / max(1, gt words)."""
    ref, hyp = gt.split(), pred.split()
    n_ref = max(1, len(ref))
    if len(hyp) - len(ref) >= n_ref:
        return 0.0          # exact: the distance is >= the length difference, so WER >= 1
    return min(1.0, max(0.0, 1.0 - _edit_distance(ref, hyp) / n_ref))


def _free_form_score(pred: str, gt: str) -> float:
    """Mean of rouge_score's ROUGE-1, ROUGE-2 and ROUGE-L F-measures of (gt, pred), in [0, 1]."""
    scores = ROUGE.score(gt[:MAX_CHARS], pred[:MAX_CHARS])                     # R7
    mean = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    return min(1.0, max(0.0, mean))


def _check_problem_type(problem_type: str, function: str) -> None:
    if problem_type not in PROBLEM_TYPES:                                       # R3
        raise ValueError(f"rewards.py {function}: problem_type {problem_type!r} is not one of "
                         f"{PROBLEM_TYPES}")


def _accuracy(pred: str, gt: str, problem_type: str) -> float:
    if problem_type == "multiple choice":
        return 1.0 if pred.strip() == gt.strip() else 0.0   # "B." and "(B)" score 0, officially
    if problem_type == "numerical":
        return _numerical_score(pred, gt)
    if problem_type == "OCR":
        return _ocr_score(pred, gt)
    if problem_type == "free-form":
        return _free_form_score(pred, gt)
    return _regression_score(pred, gt)


def accuracy_reward(completion: str, solution: str, problem_type: str) -> float:
    """Training accuracy in [0, 1] of a completion's answer ("" without tags) against the GT.

    Raises ValueError for a problem_type not in PROBLEM_TYPES.
    """
    _check_problem_type(problem_type, "accuracy_reward")
    return _accuracy(extract_answer(completion), _ground_truth(solution), problem_type)


def format_reward(completion: str) -> float:
    """1.0 when the whole completion is `<think>...</think> <answer>...</answer>`, else 0.0."""
    return 1.0 if FORMAT.fullmatch(completion[:MAX_CHARS]) else 0.0             # R7


def _float32(x: float) -> float:
    """x rounded to the nearest float32 (an overflow gives a signed infinity, as a cast does)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def mean_relative_accuracy(prediction: float, ground_truth: float) -> float:
    """VSI-Bench's MRA in {0.0, 0.1, ..., 1.0}: the share of θ in 0.50, 0.55, ..., 0.95 with
    |p - g| / (|g| + 1e-8) < 1 - θ, all in float32 as the official torch code (notes §7); 0.0 for
    nan, inf or a float32 overflow. E.g. g = 5: p = 4 gives 0.6, p = 4.5 gives 0.9 (float32)."""
    try:
        p, g = float(prediction), float(ground_truth)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not (math.isfinite(p) and math.isfinite(g)):
        return 0.0
    p32, g32 = _float32(p), _float32(g)
    difference = _float32(abs(p32 - g32))
    denominator = _float32(abs(g32) + _float32(1e-8))                          # >= float32(1e-8)
    rel = _float32(difference / denominator)         # nan or inf after an overflow: passes nothing
    return sum(rel < limit for limit in _MRA_LIMITS) / len(_MRA_LIMITS)


def eval_score(output: str, solution: str, problem_type: str) -> tuple[str, float]:
    """(prediction, score) of one benchmark item (notes §7): the answer block or, officially, the
    whole stripped output; regression by MRA, OCR and free-form by the training accuracy (R5).
    Raises ValueError for a problem_type not in PROBLEM_TYPES."""
    _check_problem_type(problem_type, "eval_score")
    prediction = extract_answer(output) or output.strip()
    gt = _ground_truth(solution)
    if problem_type != "regression":
        return prediction, _accuracy(prediction, gt, problem_type)
    p, g = parse_number(prediction), parse_number(gt)
    if p is None or g is None:
        return prediction, 0.0
    return prediction, mean_relative_accuracy(p, g)
