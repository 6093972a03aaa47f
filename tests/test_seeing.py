"""bench/seeing.py: the answer / reasoning fractions from hand-written eval records (hand-computed),
the chance column, the table's layout, and one smoke run against the tiny random model."""
import json
import sys

import pytest

from conftest import ROOT, run_cmd

sys.path.insert(0, str(ROOT / "bench"))
import seeing  # noqa: E402

SIZE = ["A. bigger", "B. smaller"]
COLOR = ["A. red", "B. green", "C. blue", "D. orange"]
ENTRIES = [   # the held-out JSON entries the records refer to (only the fields seeing reads)
    {"problem_id": 0, "data_source": "synthetic/temporal/size_change", "options": SIZE,
     "solution": "<answer>A</answer>"},
    {"problem_id": 1, "data_source": "synthetic/temporal/size_change", "options": SIZE,
     "solution": "<answer>B</answer>"},
    {"problem_id": 2, "data_source": "synthetic/temporal/count_before", "options": [],
     "solution": "<answer>2</answer>"},
    {"problem_id": 3, "data_source": "synthetic/static/color", "options": COLOR,
     "solution": "<answer>C</answer>"},
    {"problem_id": 4, "data_source": "synthetic/temporal/size_change", "options": SIZE,
     "solution": "<answer>A</answer>"},
    {"problem_id": 5, "data_source": "synthetic/temporal/size_change", "options": SIZE,
     "solution": "<answer>B</answer>"},
    {"problem_id": 6, "data_source": "synthetic/temporal/count_before", "options": [],
     "solution": "<answer>1</answer>"},
]
SAYS = {"bigger": "The shape gets bigger over time.",
        "smaller": "The shape gets smaller over time.", "none": "I am not sure what happens.",
        "2": "The square flashed 2 times before the circle appeared.",
        "1": "The square flashed 1 time before the circle appeared.",
        "0": "The square flashed 0 times before the circle.",
        "blue": "There is one shape, and it is blue.", "red": "There is one shape, and it is red."}
# (problem_id, what the reasoning says, final answer, correct): (stated right, answer follows)
# in the comment
ORDERED = [(0, "bigger", "A", True),     # (yes, yes): "bigger" is option A
           (1, "bigger", "B", True),     # (no, no): right letter, but the reasoning said the
                                         # wrong fact
           (4, "bigger", "B", False),    # (yes, no): saw it, gave the other letter
           (5, "none", "B", True),       # (no, no): no stating sentence
           (2, "2", "2", True),          # (yes, yes)
           (6, "1", "2", False),         # (yes, no)
           (3, "blue", "C", True)]       # (yes, yes): "blue" is option C
SHUFFLED = [(0, "smaller", "B", False),  # (no, yes)
            (1, "smaller", "B", True),   # (yes, yes)
            (2, "0", "0", False),        # (no, yes)
            (3, "red", "A", False)]      # (no, yes)


def write_folder(folder, ordered=ORDERED, shuffled=SHUFFLED):
    """An eval folder as eval.py writes it: a settings line, then one record per item."""
    folder.mkdir(parents=True, exist_ok=True)
    source = {e["problem_id"]: e["data_source"] for e in ENTRIES}
    for name, rows in (("eval_test.records.jsonl", ordered),
                       ("eval_test_shuffled.records.jsonl", shuffled)):
        lines = [json.dumps({"header": {"sampling": {"temperature": 0.01}}})]
        lines += [json.dumps({"index": i, "problem_id": pid, "data_source": source[pid],
                              "prediction": pred,
                              "output": f"<think>{SAYS[says]}</think> <answer>{pred}</answer>",
                              "correct": ok})
                  for i, (pid, says, pred, ok) in enumerate(rows)]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_accuracies_by_family_and_category(tmp_path):
    acc = seeing.accuracies(write_folder(tmp_path / "ev"))
    assert acc == {("ordered", "size_change"): 3 / 4, ("ordered", "count_before"): 1 / 2,
                   ("ordered", "color"): 1.0, ("ordered", "temporal"): 4 / 6,
                   ("ordered", "static"): 1.0, ("shuffled", "size_change"): 1 / 2,
                   ("shuffled", "count_before"): 0.0, ("shuffled", "color"): 0.0,
                   ("shuffled", "temporal"): 1 / 3, ("shuffled", "static"): 0.0}


def test_reasoning_states_the_fact_and_the_answer_follows(tmp_path):
    said = seeing.reasoning(write_folder(tmp_path / "ev"), {e["problem_id"]: e for e in ENTRIES})
    # multiple choice: "bigger" <-> option A
    assert said[("ordered", "size_change")] == (2 / 4, 1 / 4)
    # numerical: the stated number vs the answer
    assert said[("ordered", "count_before")] == (1.0, 1 / 2)
    assert said[("ordered", "color")] == (1.0, 1.0)
    assert said[("shuffled", "size_change")] == (1 / 2, 1.0)
    assert said[("shuffled", "count_before")] == (0.0, 1.0)
    assert said[("shuffled", "color")] == (0.0, 1.0)


def test_chance_and_first_per_family():
    assert seeing.chance(ENTRIES) == {"size_change": 1 / 2, "count_before": 1 / 2, "color": 1 / 4}
    assert [e["problem_id"] for e in seeing.first_per_family(ENTRIES, 1)] == [0, 2, 3]
    assert [e["problem_id"] for e in seeing.first_per_family(ENTRIES, 2)] == [0, 1, 2, 3, 6]


def test_table_has_every_family_and_none_where_no_item(tmp_path):
    probe = {"size_change": {"ordered": 0.9, "shuffled": 0.4, "chance": 0.5, "n_train": 10,
                             "n_test": 4}}
    t = seeing.table(write_folder(tmp_path / "ev"), ENTRIES, probe, seeing.chance(ENTRIES))
    assert list(t["families"]) == list(seeing.FAMILIES)
    row = t["families"]["size_change"]
    assert row["n"] == 4 and row["answer"] == {"ordered": 3 / 4, "shuffled": 1 / 2}
    assert (row["reasoning"] == {"ordered": 1 / 2, "shuffled": 1 / 2}
            and row["follows"]["ordered"] == 1 / 4)
    assert (row["probe"] == probe["size_change"] and row["chance"] == 1 / 2
            and row["kind"] == "temporal")
    empty = t["families"]["direction"]
    assert (empty["n"] == 0 and empty["answer"] == {"ordered": None, "shuffled": None}
            and empty["chance"] is None)
    assert t["categories"]["temporal"] == {"ordered": 4 / 6, "shuffled": 1 / 3}
    md = seeing.show(t)
    assert ("| size_change | temporal | 4 | 0.75 | 0.50 | 0.50 | 0.50 | 0.25 | 0.90 | 0.40 | 0.50 "
            "| 0.50 |") in md
    assert "| direction | temporal | 0 | – | – |" in md


@pytest.mark.slow
def test_seeing_smoke_run(builtin, tmp_path):
    """bench/seeing.py against the tiny random model on the fixture's data: a row per family and the
    JSON."""
    paths, tiny = builtin
    out = tmp_path / "seeing"
    proc = run_cmd([sys.executable, str(ROOT / "bench" / "seeing.py"), "--model", str(tiny),
                    "--cache-dir", str(paths["root"].parent), "--n", "2", "--max-new-tokens", "16",
                    "--probe-steps", "20", "--out-dir", str(out)], tmp_path)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for fam in seeing.FAMILIES:
        assert any(line.startswith(f"| {fam} |") for line in rows), proc.stdout
    assert "temperature 0.01, top-p 0.001" in proc.stdout and "at most 16 new tokens" in proc.stdout
    result = json.loads((out / "seeing.json").read_text())
    assert list(result["families"]) == list(seeing.FAMILIES) and result["n_per_family"] == 2
    assert result["decoding"]["max_new_tokens"] == 16 and result["decoding"]["template"] == "train"
    values = []
    for r in result["families"].values():
        assert r["n"] <= 2
        values += [r[k][o] for k in ("answer", "reasoning", "follows")
                   for o in ("ordered", "shuffled")]
        values += [r["probe"][o] for o in ("ordered", "shuffled", "chance")] if r["probe"] else []
    assert any(v is not None for v in values) and all(v is None or 0.0 <= v <= 1.0 for v in values)
    # at least one family had a probe to fit
    assert any(r["probe"] for r in result["families"].values())
