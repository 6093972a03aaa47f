"""The seeing table: per question family, does the model answer right, does its reasoning state the
right fact, and do its frozen vision features carry the answer at all? Ordered vs shuffled frames.

    python bench/seeing.py                           # the built-in cold start train.py starts from
    python bench/seeing.py --model runs/tgrpo/final  # any HF folder of the tiny model's kind
    python bench/seeing.py --model runs/tgrpo/final --n 8 --max-new-tokens 64 --no-probe
                                                     # a quick look

For a model folder and the built-in held-out split
(synthetic.make_dataset(<cache-dir>/data)["test"], as built there: builtin.cache.paths's
defaults; `--n` keeps the first N items of each family) it prints one row per question family
(scenes.TEMPORAL_FAMILIES + STATIC_FAMILIES), each on ordered and on shuffled frames:
- answer: the fraction of completions whose final answer is correct (eval.py's per-item "correct");
- reasoning: the fraction whose reasoning states the right fact in the built-in COT's words
  (scenes.stated_answer against the right option's text, or the number); follows: the fraction whose
  final answer is the one its own reasoning states (a completion without a stating sentence counts
  as wrong on both);
- probe: held-out accuracy of a linear probe of the model's frozen vision features
  (bench/vision_probe.py: one probe per family fitted on the training split's ordered clips, tested
  on the held-out video clips, ordered and shuffled with the probe's own seeded shuffle);
- chance: a uniform guess among the options (multiple choice) or among the values the family's
  answer takes in the held-out split (numerical); probe chance: the held-out clips' most common
  answer class (as vision_probe).
Answer and reasoning come from `eval.py --shuffled true --template train --preset tiny` as a
subprocess (the training prompt: the tiny model has never seen the official eval prompt), decoded
with eval.py's near-greedy defaults (temperature 0.01, top-p 0.001: what the model knows, not what
sampling may hit) unless --temperature or --top-p say otherwise; the printed header states the
settings eval.py recorded. Writes out-dir/seeing.json (layout: `table`) and keeps eval.py's records
in out-dir/eval/, which a rerun with the same settings reuses; eval.py refuses records made with
other settings (another model, --n, decoding): use another --out-dir or delete that folder.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import distributed  # noqa: E402
from builtin import coldstart, scenes  # noqa: E402
from builtin import synthetic  # noqa: E402

FAMILIES = scenes.TEMPORAL_FAMILIES + scenes.STATIC_FAMILIES
ORDERS = (("ordered", "eval_test.records.jsonl"), ("shuffled", "eval_test_shuffled.records.jsonl"))


def parse(argv=None) -> argparse.Namespace:
    """The command line (argv: list of strings; None: sys.argv[1:]) as a Namespace; exits on a bad
    flag."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="",
                    help="HF folder of the policy; empty: the built-in cold start train.py "
                         "starts from "
                         "(coldstart.find_or_build: <cache-dir>/coldstart/final, else the shipped "
                         "assets/coldstart, else built)")
    ap.add_argument("--cache-dir", default="runs/cache",
                    help="the built-in data: <cache-dir>/data (built with the defaults if missing)")
    ap.add_argument("--out-dir", default="runs/seeing",
                    help="seeing.json and eval.py's records (eval/) go here")
    ap.add_argument("--n", type=int, default=0,
                    help="> 0: only the first N held-out items of each family")
    ap.add_argument("--max-new-tokens", type=int, default=128,
                    help="max new tokens per completion")
    ap.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature; default: eval.py's (0.01)")
    ap.add_argument("--top-p", type=float, default=None,
                    help="nucleus mass; default: eval.py's (0.001, greedy in practice)")
    ap.add_argument("--probe-steps", type=int, default=500,
                    help="Adam steps of each linear probe (vision_probe's default)")
    ap.add_argument("--no-probe", action="store_true", help="skip the vision-feature probes")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the frame shuffles and of sampling")
    return ap.parse_args(argv)


def accuracies(folder: Path, orders=ORDERS) -> dict:
    """{(order, group): accuracy} from an eval folder's records; group 'temporal', 'static' or a
    family name. orders: (order, records file name) pairs, by default the built-in test split's
    two."""
    out = {}
    for order, name in orders:
        hits: dict[str, list[float]] = {}
        for line in (folder / name).read_text().splitlines():
            r = json.loads(line)
            if "data_source" not in r:   # the settings line
                continue
            _, category, family = r["data_source"].split("/")
            for g in (category, family):
                hits.setdefault(g, []).append(float(r["correct"]))
        out.update({(order, g): sum(v) / len(v) for g, v in hits.items()})
    return out


def reasoning(folder: Path, test: dict) -> dict:
    """{(order, family): (stated, follows)} from an eval folder's records: the fraction of
    completions whose reasoning states the right answer (scenes.stated_answer, in the COT's words),
    and the fraction whose final answer is the one its reasoning states (for multiple choice: the
    letter of that option). Completions without a stating sentence count as wrong on both. test:
    {problem_id: entry of the held-out JSON}."""
    out = {}
    for order, name in ORDERS:
        hits: dict[str, list[tuple[bool, bool]]] = {}
        for line in (folder / name).read_text().splitlines():
            r = json.loads(line)
            if "data_source" not in r:
                continue
            family, e = r["data_source"].split("/")[-1], test[r["problem_id"]]
            # letter -> option text
            text = {o.split(". ", 1)[0]: o.split(". ", 1)[1] for o in e["options"]}
            gt = e["solution"].removeprefix("<answer>").removesuffix("</answer>").strip()
            said = scenes.stated_answer(family, r["output"])
            pred = text.get(str(r["prediction"])) if text else str(r["prediction"])
            hits.setdefault(family, []).append((said is not None and said == text.get(gt, gt),
                                                said is not None and pred == said))
        out.update({(order, f): tuple(sum(h[i] for h in v) / len(v) for i in (0, 1))
                    for f, v in hits.items()})
    return out


def chance(entries: list[dict]) -> dict[str, float]:
    """{family: accuracy of a uniform guess} over held-out JSON entries: the mean of 1 / (number of
    options) for multiple choice, 1 / (number of distinct solutions of the family in `entries`) for
    numerical answers. Families without entries are absent."""
    fams: dict[str, list[dict]] = {}
    for e in entries:
        fams.setdefault(e["data_source"].split("/")[-1], []).append(e)
    return {f: (sum(1 / len(e["options"]) for e in es) / len(es) if es[0]["options"]
                else 1 / len({e["solution"] for e in es})) for f, es in fams.items()}


def builtin_data(folder: Path) -> dict:
    """synthetic.make_dataset(folder)'s paths, with the parameters its manifest records when the
    folder holds a built dataset (then nothing is rendered unless synthetic.VERSION changed since),
    else with the defaults (the data builtin.cache.paths builds). Parameters make_dataset no longer
    takes are dropped."""
    manifest = folder / "manifest.json"
    known = inspect.signature(synthetic.make_dataset).parameters
    params = json.loads(manifest.read_text())["params"] if manifest.exists() else {}
    return synthetic.make_dataset(folder, **{k: v for k, v in params.items()
                                             if k in known and k != "out_dir"})


def first_per_family(entries: list[dict], n: int) -> list[dict]:
    """The first `n` entries of each data_source among held-out JSON `entries`, in file order."""
    seen: dict[str, int] = {}
    keep = []
    for e in entries:
        seen[e["data_source"]] = seen.get(e["data_source"], 0) + 1
        if seen[e["data_source"]] <= n:
            keep.append(e)
    return keep


def run_eval(a: argparse.Namespace, model: Path, test_json: Path, media_root: Path,
             folder: Path) -> dict:
    """eval.py on `test_json` (benchmark name 'test'), ordered and shuffled frames, records in
    `folder`; output in folder.parent/eval.log. Returns the settings header eval.py recorded (model,
    sampling, template, media). Raises RuntimeError with the log's tail when eval.py fails."""
    cmd = [sys.executable, str(ROOT / "eval.py"), "--model", str(model), "--data", str(test_json),
           "--name", "test",
           "--media-root", str(media_root), "--shuffled", "true", "--template", "train",
           "--preset", "tiny",
           "--max-new-tokens", str(a.max_new_tokens), "--seed", str(a.seed),
           "--out-dir", str(folder)]
    cmd += ["--temperature", str(a.temperature)] if a.temperature is not None else []
    cmd += ["--top-p", str(a.top_p)] if a.top_p is not None else []
    log = folder.parent / "eval.log"
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if rc != 0:
        raise RuntimeError(f"seeing: eval.py failed with exit code {rc}; {log} ends:\n"
                           + log.read_text()[-3000:])
    return json.loads((folder / ORDERS[0][1]).read_text().splitlines()[0])["header"]


def probes(model: Path, train_json: Path, test_json: Path, media_root: Path, steps: int,
           seed: int) -> dict:
    """{family: {"ordered", "shuffled", "chance": fractions in [0, 1], "n_train", "n_test": clips}}
    of linear probes of the model's frozen vision features (vision_probe.features at the tiny
    preset's frames and pixels, vision_probe.probe with its L2 penalty 1e-3): fitted on the training
    split's ordered video clips, tested on the held-out video clips of `test_json`. A family with no
    held-out clip or fewer than 2 training classes is absent. Raises pixels.MediaError for an
    unreadable clip."""
    import data
    import pixels
    import vision_probe
    from model import load_policy
    from builtin.tiny import TINY_MEDIA

    hf, _ = load_policy(model)
    hf.eval()
    media = pixels.MediaConfig(**TINY_MEDIA)
    tr = [s for s in data.load_samples(train_json) if s.data_type == "video"]
    te = [s for s in data.load_samples(test_json, media_root) if s.data_type == "video"]
    Xtr, ftr, ytr = vision_probe.features(hf, tr, media, False, seed)  # (n train, F)
    Xte, fte, yte = vision_probe.features(hf, te, media, False, seed)  # (n test, F)
    Xsh, _, _ = vision_probe.features(hf, te, media, True, seed)
    out = {}
    for fam in FAMILIES:
        itr, ite = ([i for i, f in enumerate(ftr) if f == fam],
                    [i for i, f in enumerate(fte) if f == fam])
        if not ite or len({ytr[i] for i in itr}) < 2:
            continue
        y = [yte[i] for i in ite]
        acc_o, acc_s = vision_probe.probe(Xtr[itr], [ytr[i] for i in itr],
                                          [(Xte[ite], y), (Xsh[ite], y)], steps, 1e-3)
        out[fam] = {"ordered": acc_o, "shuffled": acc_s,
                    "chance": max(y.count(c) for c in set(y)) / len(y),
                    "n_train": len(itr), "n_test": len(ite)}
    return out


def table(folder: Path, entries: list[dict], probe: dict | None,
          guess: dict[str, float]) -> dict:
    """The seeing table from an eval folder (eval.py's records of `entries`, the held-out JSON
    entries evaluated), `probes`' output (None: not run) and `chance`'s output on the whole held-out
    split. Returns {"families": {family: row}, "categories": {"temporal" | "static": {"ordered",
    "shuffled"}}} where row = {"kind", "n" (items evaluated), "answer", "reasoning", "follows" (each
    {"ordered", "shuffled"}), "probe" (probes' dict or None), "chance"}; fractions in [0, 1], None
    where the family has no record. Raises KeyError for a record whose problem_id is not among
    `entries`, FileNotFoundError for a missing records file."""
    acc, said = accuracies(folder), reasoning(folder, {e["problem_id"]: e for e in entries})
    rows = {}
    for fam in FAMILIES:
        n = sum(e["data_source"].split("/")[-1] == fam for e in entries)
        # None: no record (no item, or excluded)
        stated = {o: said.get((o, fam), (None, None)) for o, _ in ORDERS}
        rows[fam] = {"kind": "temporal" if fam in scenes.TEMPORAL_FAMILIES else "static", "n": n,
                     "answer": {o: acc.get((o, fam)) for o, _ in ORDERS},
                     "reasoning": {o: stated[o][0] for o in stated},
                     "follows": {o: stated[o][1] for o in stated}, "probe": (probe or {}).get(fam),
                     "chance": guess.get(fam)}
    cats = {c: {o: acc.get((o, c)) for o, _ in ORDERS} for c in ("temporal", "static")}
    return {"families": rows, "categories": cats}


def show(t: dict) -> str:
    """`table`'s dict as a markdown table (fractions with 2 decimals, '–' for none) plus one line
    per category."""
    f = lambda x: "–" if x is None else f"{x:.2f}"
    lines = ["| family | kind | n | answer, ordered | answer, shuffled | reasoning, ordered | "
             "reasoning, shuffled | "
             "follows, ordered | probe, ordered | probe, shuffled | chance | probe chance |",
             "|---|---|" + "---|" * 10]
    for fam, r in t["families"].items():
        p = r["probe"] or {}
        cells = [r["answer"]["ordered"], r["answer"]["shuffled"], r["reasoning"]["ordered"],
                 r["reasoning"]["shuffled"],
                 r["follows"]["ordered"], p.get("ordered"), p.get("shuffled"), r["chance"],
                 p.get("chance")]
        lines.append(f"| {fam} | {r['kind']} | {r['n']} | " + " | ".join(map(f, cells)) + " |")
    lines += [f"answer, all {c} items: {f(v['ordered'])} ordered, {f(v['shuffled'])} shuffled"
              for c, v in t["categories"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Evaluate, probe, print the table and write out-dir/seeing.json; returns what it wrote (a
    dict). Exits (SystemExit) when the model folder has no config.json; RuntimeError when eval.py
    fails."""
    a = parse(argv)
    cache, out = Path(a.cache_dir).resolve(), Path(a.out_dir).resolve()
    paths = builtin_data(cache / "data")
    # what train.py takes
    model = (Path(a.model).resolve() if a.model
             else coldstart.find_or_build(cache, distributed.Dist()))
    if not (model / "config.json").exists():
        raise SystemExit(f"seeing: no HF model folder at {model}; "
                         f"pass --model (the default is the built-in cold start)")
    entries = json.loads(Path(paths["test"]).read_text())
    # chance over the whole split, not the --n subset
    test_json, guess = Path(paths["test"]), chance(entries)
    # the first N of each family, in a file of its own (eval.py refuses records of another subset)
    if a.n > 0:
        entries = first_per_family(entries, a.n)
        test_json = out / f"test_n{a.n}.json"
        out.mkdir(parents=True, exist_ok=True)
        test_json.write_text(json.dumps(entries, indent=1) + "\n")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    print(f"seeing: {model} on {len(entries)} held-out items of {test_json}; "
          f"eval.py -> {out / 'eval'}", flush=True)
    header = run_eval(a, model, test_json, Path(paths["root"]), out / "eval")
    probe = None if a.no_probe else probes(model, Path(paths["train"]), test_json,
                                           Path(paths["root"]), a.probe_steps, a.seed)
    t = table(out / "eval", entries, probe, guess)
    sp = header["sampling"]
    result = {"command": "python bench/seeing.py "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "model": str(model), "data": str(test_json), "n_per_family": a.n or None,
              "seed": a.seed,
              "decoding": sp | {"template": header["template"]}, "media": header["media"],
              "probe_steps": None if a.no_probe else a.probe_steps} | t
    (out / "seeing.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\nmodel {model}; {len(entries)} held-out items; the training prompt (--template train); "
        f"decoding: temperature "
        f"{sp['temperature']}, top-p {sp['top_p']}, top-k {sp['top_k'] or 'off'}, "
        f"at most {sp['max_new_tokens']} new tokens"
        f"{' (near-greedy: eval.py defaults)' if a.temperature is None and a.top_p is None else ''}"
        f"; seed {a.seed}; "
        + ("no probes" if a.no_probe
           else f"probes: {a.probe_steps} Adam steps on the training split's clips"))
    print(show(t))
    print(f"written: {out / 'seeing.json'}\ncommand: {result['command']}")
    return result


if __name__ == "__main__":
    main()
