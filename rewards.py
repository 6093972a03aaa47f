"""Video-R1's rule rewards: pure functions from strings to scores in [0, 1].

What is here (notes §2 for training, §7 for evaluation, §9 items 14-15 for the quirks):

- `extract_answer`: the text of the first ``<answer>...</answer>`` block, stripped.
- `accuracy_reward`: the accuracy column of the reward matrix, one formula per problem type
  (multiple choice, numerical, OCR, free-form, regression).
- `format_reward`: 1.0 when the whole completion is ``<think>...</think> <answer>...</answer>``.
- `mean_relative_accuracy` and `eval_score`: the eval scorer, with VSI-Bench's MRA for regression.
- `parse_number`: the official numeric normalisation (drop every ``,``, then ``float``).

Nothing here touches a model, a file or the console. No input string makes a function raise; the one
error is the ValueError that `accuracy_reward` and `eval_score` raise for an unknown problem type.

Departures from the official code (docs/departures.md; the ID stands at the line):
  R1  regression: 1 - |p - g| / |g|, so an exact answer scores 1.0 (the code: 0.9999999998)
  R2  regression with g = 0: p = 0 scores 1.0, anything else 0.0 (the code: always 0)
  R3  an unknown problem type raises ValueError (the code scores it 0.0 silently)
  R4  a solution without <answer> tags is its own ground truth (the code compares against "")
  R5  eval scores OCR and free-form with the training accuracy (the code: 0; no benchmark has them)
  R6  MRA is passes / 10 as a Python float (the code: a float32 mean); the comparisons stay float32
  R7  ROUGE with rouge_score's tokenizer, own counts and a bit-parallel LCS (linear memory, same values)
  R8  answer extraction and the format check in linear time (same results as the code's regexes)
  R9  nothing is printed (the code prints when a number does not parse)
"""

import math
import re
import struct
from collections import Counter

from rouge_score import scoring, tokenizers

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")

_WHITESPACE = re.compile(r"\s*")  # the official regexes' \s, so whitespace means the same thing here
_ROUGE_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=True)  # lowercase, [a-z0-9] tokens, Porter stems
_FREE_FORM_CAP_FACTOR = 20  # a free-form prediction is cut to this many times the GT's length...
_FREE_FORM_CAP_FLOOR = 20_000  # ...but never to fewer than this many characters
# 1 - torch.arange(0.5, 0.95 + 0.025, 0.05, dtype=float32) as float32: the 10 MRA limits of the official
# code (thresholds 0.50, 0.55, ..., 0.95). The tests check these against torch.
_MRA_LIMITS = (0.5, 0.44999998807907104, 0.3999999761581421, 0.3500000238418579, 0.30000001192092896,
               0.25, 0.19999998807907104, 0.1499999761581421, 0.10000002384185791, 0.050000011920928955)


def _find_answer(text: str) -> str | None:
    """Stripped text of the first <answer>...</answer> block, or None when there is none.

    Same result as ``re.search(r"<answer>\\s*(.*?)\\s*</answer>", text, re.DOTALL).group(1).strip()``:
    the leftmost "<answer>" that has a "</answer>" somewhere after it starts the match, and the lazy
    group ends at the first such "</answer>". The surrounding \\s* are whitespace that strip() removes.
    """
    start = text.find("<answer>")
    if start < 0:
        return None
    end = text.find("</answer>", start + len("<answer>"))
    if end < 0:
        return None
    return text[start + len("<answer>"):end].strip()


def extract_answer(text: str) -> str:
    """The answer of a completion or a dataset solution (notes §2, "Answer extraction").

    Args:
        text: any string.
    Returns:
        The first ``<answer>\\s*(.*?)\\s*</answer>`` match (DOTALL), stripped; "" when there is none.
        Computed in linear time (R8).
    """
    found = _find_answer(text)
    return "" if found is None else found


def _ground_truth(solution: str) -> str:
    """The GT of a dataset solution: its answer block ("<answer>GT</answer>"), or the stripped solution when it
    has no tags (R4)."""
    found = _find_answer(solution)
    return solution.strip() if found is None else found


def parse_number(text: str) -> float | None:
    """The official numeric normalisation (notes §2): remove every ",", then float().

    Args:
        text: any string. Whatever float() accepts is a number, including "1e3", "  7 ", "1_000" and
            Unicode digits.
    Returns:
        The value, or None when float() rejects the text or the value is nan or infinite.
    """
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numerical_score(pred: str, gt: str) -> float:
    """Numerical accuracy (notes §2): 0.0 if exactly one of GT and prediction contains "." or ","; else 1.0 iff
    both parse (`parse_number`) and round(g, 2) == round(p, 2)."""
    if ("." in gt or "," in gt) != ("." in pred or "," in pred):
        return 0.0  # "3.0" vs "3" and "1,000" vs "1000" score 0, as in the official code
    p, g = parse_number(pred), parse_number(gt)
    if p is None or g is None:
        return 0.0
    return 1.0 if round(g, 2) == round(p, 2) else 0.0


def _regression_score(pred: str, gt: str) -> float:
    """Regression accuracy: 1 - |p - g| / |g|, clipped to [0, 1]; exactly 1.0 when p == g; when g = 0, 1.0 for
    p = 0 and 0.0 otherwise (R1, R2). 0.0 when either does not parse."""
    p, g = parse_number(pred), parse_number(gt)
    if p is None or g is None:
        return 0.0
    if p == g:
        return 1.0
    if g == 0.0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - abs(p - g) / abs(g)))  # an overflow to inf clips to 0


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists, unit costs, two-row DP (O(len(ref) * len(hyp)))."""
    shortest = min(len(ref), len(hyp))
    prefix = 0  # a shared prefix or suffix never changes the distance: drop both
    while prefix < shortest and ref[prefix] == hyp[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and ref[-1 - suffix] == hyp[-1 - suffix]:
        suffix += 1
    ref, hyp = ref[prefix:len(ref) - suffix], hyp[prefix:len(hyp) - suffix]
    previous = list(range(len(hyp) + 1))  # distances from ref[:0] to every prefix of hyp
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return previous[-1]


def _ocr_score(pred: str, gt: str) -> float:
    """OCR accuracy (notes §2): 1 - WER, clipped to [0, 1]. WER = word-level Levenshtein distance between
    gt.split() and pred.split(), divided by max(1, len(gt words)). Shortcut, exact: when the prediction has at
    least max(1, len(gt words)) more words than the GT, WER >= 1 and the score is 0 without running the DP."""
    ref, hyp = gt.split(), pred.split()
    n_ref = max(1, len(ref))
    if len(hyp) - len(ref) >= n_ref:
        # Exact shortcut: the distance is at least the length difference, so WER >= 1 and the score
        # is 0. It bounds the DP to len(hyp) < 2 * len(ref) words, so a huge prediction costs nothing.
        return 0.0
    return min(1.0, max(0.0, 1.0 - _edit_distance(ref, hyp) / n_ref))


def _ngram_fmeasure(ref: list[str], hyp: list[str], n: int) -> float:
    """ROUGE-n F-measure exactly as rouge_score computes it (clipped n-gram overlap counts)."""
    ref_counts = Counter(zip(*(ref[i:] for i in range(n))))
    hyp_counts = Counter(zip(*(hyp[i:] for i in range(n))))
    overlap = sum(min(count, hyp_counts[gram]) for gram, count in ref_counts.items())
    precision = overlap / max(sum(hyp_counts.values()), 1)
    recall = overlap / max(sum(ref_counts.values()), 1)
    return scoring.fmeasure(precision, recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel algorithm (Allison and Dix 1986; Hyyro 2004): one bit per token of the shorter list,
    one big-integer update per token of the longer one, so O(len(a) * len(b) / 64) word operations and
    linear memory. After every token of the longer list, the zero bits of v count the LCS so far.
    """
    if len(a) > len(b):
        a, b = b, a
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    all_ones = (1 << len(a)) - 1
    v = all_ones
    for token in b:
        match = positions.get(token)
        if match is not None:
            u = v & match
            v = ((v + u) | (v - u)) & all_ones
    return len(a) - bin(v).count("1")


def _free_form_score(pred: str, gt: str) -> float:
    """Free-form accuracy (notes §2): mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures of rouge_score's
    RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True).score(gt, pred), clipped to [0, 1]. Same
    values, computed in linear memory (R7). The prediction is first cut to max(20 * len(gt), 20000) characters.
    A training completion (at most 768 tokens) is far shorter than 20000 characters, so no realistic score
    changes; and for a prediction of N tokens against m GT tokens every F-measure is at most 2m / (m + N),
    already small for text that long."""
    pred = pred[:max(_FREE_FORM_CAP_FACTOR * len(gt), _FREE_FORM_CAP_FLOOR)]  # R7
    ref = _ROUGE_TOKENIZER.tokenize(gt)
    hyp = _ROUGE_TOKENIZER.tokenize(pred)
    rouge_1 = _ngram_fmeasure(ref, hyp, 1)
    rouge_2 = _ngram_fmeasure(ref, hyp, 2)
    rouge_l = 0.0
    if ref and hyp:
        lcs = _lcs_length(ref, hyp)
        rouge_l = scoring.fmeasure(lcs / len(hyp), lcs / len(ref))
    return min(1.0, max(0.0, (rouge_1 + rouge_2 + rouge_l) / 3))


def _check_problem_type(problem_type: str, function: str) -> None:
    """Raise ValueError naming the function and the field when problem_type is not a known type."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"rewards.py {function}: problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")


def _accuracy(pred: str, gt: str, problem_type: str) -> float:
    """Training accuracy of an extracted prediction against an extracted GT (problem_type checked)."""
    if problem_type == "multiple choice":
        return 1.0 if pred.strip() == gt.strip() else 0.0  # "B." and "(B)" score 0, as in the official code
    if problem_type == "numerical":
        return _numerical_score(pred, gt)
    if problem_type == "OCR":
        return _ocr_score(pred, gt)
    if problem_type == "free-form":
        return _free_form_score(pred, gt)
    return _regression_score(pred, gt)


def accuracy_reward(completion: str, solution: str, problem_type: str) -> float:
    """Accuracy reward of one completion (notes §2, "Accuracy by problem_type").

    The prediction is `extract_answer(completion)` ("" without tags, as in training); the GT is
    `_ground_truth(solution)`.

    - multiple choice: 1.0 iff the prediction equals the GT exactly (case-sensitive, no letter parsing);
    - numerical, OCR, free-form, regression: `_numerical_score`, `_ocr_score`, `_free_form_score`,
      `_regression_score` (each states its rule).

    Args:
        completion: the decoded completion text (any string).
        solution: the dataset's solution string (any string).
        problem_type: one of PROBLEM_TYPES.
    Returns:
        A float in [0, 1]. Anything that cannot be parsed scores 0.0.
    Raises:
        ValueError: if problem_type is not in PROBLEM_TYPES (the only error).
    """
    _check_problem_type(problem_type, "accuracy_reward")
    return _accuracy(extract_answer(completion), _ground_truth(solution), problem_type)


def format_reward(completion: str) -> float:
    """Format reward (notes §2, "Format reward").

    Args:
        completion: the decoded completion text (any string).
    Returns:
        1.0 when ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", completion, re.DOTALL)``
        matches, else 0.0. A trailing newline or any text before <think> fails. Computed in linear time
        (R8): the text must start with "<think>" and end with "</answer>", and some "</think>"
        after the opening tag must be followed by whitespace and "<answer>". (No suffix of "<answer>" is a
        prefix of "</answer>", so the two tags never overlap.)
    """
    if not (completion.startswith("<think>") and completion.endswith("</answer>")):
        return 0.0
    close_think = completion.find("</think>", len("<think>"))
    while close_think >= 0:
        open_answer = _WHITESPACE.match(completion, close_think + len("</think>")).end()
        if completion.startswith("<answer>", open_answer):  # cannot overlap the final "</answer>"
            return 1.0
        close_think = completion.find("</think>", close_think + 1)
    return 0.0


def _float32(x: float) -> float:
    """x rounded to the nearest float32 (overflow gives a signed infinity, as a float32 cast does)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def mean_relative_accuracy(prediction: float, ground_truth: float) -> float:
    """VSI-Bench mean relative accuracy, as the official eval computes it (notes §7).

    rel = |p - g| / (|g| + 1e-8), with every operation rounded to float32 like the official torch code.
    The result is the fraction of the 10 thresholds θ in {0.50, 0.55, ..., 0.95} with rel < 1 - θ
    (strict), where 1 - θ is also float32. Example: g = 5 gives 0.6 for p = 4, 0.2 for p = 3 or 7, and 0
    for p = 2.4. Boundary cases follow float32: p = 4.5 gives rel = float32(0.1) = 0.10000000149, which
    is below float32(1 - float32(0.9)) = 0.10000002384, so it scores 0.9 (0.8 in exact arithmetic).

    Args:
        prediction: predicted value p.
        ground_truth: ground-truth value g.
    Returns:
        A float in {0.0, 0.1, ..., 1.0}. 0.0 when either input is nan or infinite, or when the float32
        values overflow.
    """
    try:
        p, g = float(prediction), float(ground_truth)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not (math.isfinite(p) and math.isfinite(g)):
        return 0.0
    p32, g32 = _float32(p), _float32(g)
    difference = _float32(abs(p32 - g32))
    denominator = _float32(abs(g32) + _float32(1e-8))  # at least float32(1e-8) > 0
    rel = _float32(difference / denominator)  # nan or inf after a float32 overflow: no threshold passes
    return sum(rel < limit for limit in _MRA_LIMITS) / len(_MRA_LIMITS)


def eval_score(output: str, solution: str, problem_type: str) -> tuple[str, float]:
    """The eval scorer of one benchmark item (notes §7, "Scoring").

    The prediction is `extract_answer(output)`, or the whole stripped output when that is empty (the
    official eval does this; training does not). The GT is read from `solution` as in `accuracy_reward`.
    Multiple choice and numerical score as in training. Regression scores
    `mean_relative_accuracy(parse_number(prediction), parse_number(gt))`, 0.0 when either does not parse.
    OCR and free-form get the training accuracy (R5).

    Args:
        output: the model's raw output text (any string).
        solution: the item's solution string (any string).
        problem_type: one of PROBLEM_TYPES.
    Returns:
        (prediction, score), with score in [0, 1].
    Raises:
        ValueError: if problem_type is not in PROBLEM_TYPES (the only error).
    """
    _check_problem_type(problem_type, "eval_score")
    prediction = extract_answer(output) or output.strip()
    gt = _ground_truth(solution)
    if problem_type != "regression":
        return prediction, _accuracy(prediction, gt, problem_type)
    p, g = parse_number(prediction), parse_number(gt)
    if p is None or g is None:
        return prediction, 0.0
    return prediction, mean_relative_accuracy(p, g)
