"""heldout.evaluate's arithmetic with K completions per prompt, against counts made by hand (the
generator is replaced by fixed completions, so only the scoring and the averaging are under test);
heldout.load's refusal of an evaluation with no readable prompt, and --eval-media-root; several
named held-out sets (parse_sets, their rows, trackers and curves on uneven ranks)."""
import contextlib

import pytest
import torch

import data
import distributed
import heldout
import rollout

TEXTS = {  # token id -> completion text; format = <think>..</think><answer>..</answer>,
           # accuracy = answer == GT
    1: "<think>red</think><answer>B</answer>",       # format 1, right for GT "B"
    2: "<think>red</think><answer>A</answer>",       # format 1, wrong
    3: "B",                                          # format 0, accuracy 0 (no answer tags)
    4: "<think>3</think><answer>3</answer>",         # format 1, right for GT "3"
}


class Tok:
    pad_token_id = 0

    def convert_tokens_to_ids(self, token):
        return 9

    def batch_decode(self, ids, skip_special_tokens=True):
        return [TEXTS[int(row[0])] for row in ids]


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hf = torch.nn.Linear(1, 1)


def sample(solution, problem_type):
    return data.Sample(problem_id=0, problem="q", data_type="image", problem_type=problem_type,
                       options=[], solution=f"<answer>{solution}</answer>", path="", media_path="")


def test_k_completions_per_prompt_are_averaged(monkeypatch):
    # prompt 1 (GT "B"): completions 1, 2, 3 -> accuracy 1, 0, 0; format 1, 1, 0; lengths 5, 7, 2
    # prompt 2 (GT "3"): completions 4, 4, 2 -> accuracy 1, 1, 0; format 1, 1, 1; lengths 4, 4, 6
    made = [[1, 2, 3], [4, 4, 2]]
    lengths = [[5, 7, 2], [4, 4, 6]]
    asked = []

    def generate(hf, ids, visuals, n, sampling, pad_id, stops, gen, decoder=None):
        asked.append(list(n))
        outs = []
        for i in range(len(ids)):
            k = len(asked) - 1 + i                                   # batch 1: one prompt per call
            rows = torch.tensor(made[k])[:, None]
            outs.append(rollout.Completions(ids=rows, mask=torch.ones(3, 1),
                                            lengths=torch.tensor(lengths[k]),
                                            logprobs=torch.zeros(3, 1)))
        return outs

    monkeypatch.setattr(heldout.rollout, "generate", generate)
    monkeypatch.setattr(heldout.common, "stop_ids", lambda tok: [9])
    prompts = [(torch.zeros(1, dtype=torch.long), None, sample("B", "multiple choice")),
               (torch.zeros(1, dtype=torch.long), None, sample("3", "numerical"))]
    out = heldout.evaluate(Holder(), Tok(), prompts, None, 1, distributed.Dist(), 0,
                           contextlib.nullcontext, 3)
    assert asked == [[3], [3]]                                  # K = 3 completions asked per prompt
    assert out["eval_n"] == 2                                        # prompts, not completions
    assert out["eval_accuracy"] == 3 / 6 and out["eval_format"] == 5 / 6
    assert out["eval_length"] == (5 + 7 + 2 + 4 + 4 + 6) / 6


def test_an_evaluation_with_no_readable_prompt_is_refused(builtin, tmp_path):
    """--eval-data whose media resolve against the training --media-root, where they are not: every
    held-out prompt would be skipped and the run would log accuracy 0.0. It stops instead, naming
    the file and the root; --eval-media-root (here a folder where the paths resolve) fixes it."""
    import json
    import os
    import sys
    from conftest import ROOT, run_cmd
    paths, tiny = builtin
    entries = json.loads(paths["test"].read_text())[:3]
    for e in entries:
        e["path"] = "./elsewhere/" + e["path"][2:]                 # resolvable from tmp_path/e only
    held = tmp_path / "held.json"
    held.write_text(json.dumps(entries))
    (tmp_path / "e").mkdir()
    os.symlink(paths["test"].parent, tmp_path / "e" / "elsewhere")
    cmd = [sys.executable, str(ROOT / "train.py"), "--model", str(tiny), "--data",
           str(paths["train"]), "--preset", "tiny", "--media-root", str(paths["train"].parent),
           "--steps", "1", "--G", "2", "--max-completion-length", "4", "--prompts-per-rank", "1",
           "--eval-data", str(held), "--eval-samples", "3", "--eval-completions", "1", "--out-dir",
           str(tmp_path / "out")]
    proc = run_cmd(cmd, tmp_path, ok=False)
    assert proc.returncode != 0
    assert (f"{held}: none of its 3 held-out samples has readable media, "
            f"resolved against {paths['train'].parent}") \
        in proc.stderr and "--eval-media-root" in proc.stderr
    proc = run_cmd(cmd + ["--eval-media-root", str(tmp_path / "e")], tmp_path)
    rows = [json.loads(line)
            for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_n"] for r in rows if "eval_n" in r] == [3, 3]


def test_parse_sets_names_and_refusals():
    assert heldout.parse_sets("") == []
    assert heldout.parse_sets("test.json") == [("", "test.json")]              # the one unnamed set
    assert heldout.parse_sets("reversed=a.json,following=b.json") == [("reversed", "a.json"),
                                                                      ("following", "b.json")]
    assert (heldout.key("accuracy", "") == "eval_accuracy"
            and heldout.key("n", "reversed") == "eval_n/reversed")
    for bad, why in (("a=x.json,a=y.json", "twice"), ("x.json,b=y.json", "needs a name"),
                     ("a b=x.json", "NAME=FILE"), ("a=", "NAME=FILE")):
        with pytest.raises(ValueError, match=why):
            heldout.parse_sets(bad)
    import config
    import train
    cfg, _ = config.parse(train.Config, ["--eval-data", "r=a.json", "--eval-data", "f=b.json"])
    assert cfg.eval_data == "r=a.json,f=b.json"


def test_named_sets_in_metrics_trackers_and_curves_on_uneven_ranks(builtin, tmp_path):
    """train.py on 2 ranks with two named held-out sets of 3 and 2 prompts (so the ranks hold 2 + 1
    and 1 + 1, and a set of 1 leaves rank 1 empty): each set's rows under its own keys in
    metrics.jsonl, before and after training, each covering all its prompts; the same values in
    TensorBoard under eval/accuracy/NAME; a curves panel per set."""
    import json
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import curves
    from conftest import run_train
    paths, _ = builtin
    tests = json.loads(paths["test"].read_text())
    files = {}
    for name, k in (("three", 3), ("two", 2), ("one", 1)):
        files[name] = paths["test"].with_name(f"held_{name}.json")
        files[name].write_text(json.dumps(tests[:k]))
    sets = [a for name in files for a in ("--eval-data", f"{name}={files[name]}")]
    run_train(["--steps", "1", "--G", "2", "--max-completion-length", "8", "--prompts-per-rank",
               "1", "--eval-samples", "8", "--report-to", "tensorboard", *sets], tmp_path, nproc=2,
              builtin=builtin)
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    assert [r["step"] for r in evals] == [0, 1]
    for r in evals:
        assert (r["eval_n/three"], r["eval_n/two"], r["eval_n/one"]) == (3, 2, 1)
        assert "eval_accuracy" not in r and all(0 <= r[f"eval_accuracy/{n}"] <= 1 for n in files)
    acc = EventAccumulator(str(next((tmp_path / "out" / "tensorboard")
                                    .glob("events.out.tfevents.*"))))
    acc.Reload()
    for name in files:
        got = [(e.step, e.value) for e in acc.Scalars(f"eval/accuracy/{name}")]
        assert got == [(r["step"], pytest.approx(r[f"eval_accuracy/{name}"])) for r in evals]
    assert "eval: accuracy per held-out set" in curves.panels(set().union(*rows))
    assert (curves.expand(("eval_accuracy/",), set().union(*rows))
            == [f"eval_accuracy/{n}" for n in sorted(files)])
