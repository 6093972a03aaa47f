"""Evidence: does T-GRPO move a policy off a static shortcut? GRPO against T-GRPO's temporal-signal
variants on the static-shortcut benchmark (shortcut.py), from the built-in cold start, on a CPU.

    python bench/evidence.py                              # the reported comparison: 4 seeds x 4
                                                          # variants, ~40 min on 2 CPU cores
                                                          # (bench/evidence/README.md: protocol,
                                                          # results)
    python bench/evidence.py --seeds 0 --rl-steps 2 --n-train 24 --n-test 8 \\
        --cold-start runs/cache/tiny \\
        --out runs/evidence-smoke                         # the smoke run the tests use (a random
                                                          # start; minutes)
    python bench/evidence.py --report-only                # re-aggregate an existing --out folder
    python bench/evidence.py --protocol shortcut-start --out runs/evidence-shortcut
                                                          # RL from a policy that starts on the
                                                          # shortcut (bench/shortcut_start.py)

What it runs, every stage through the project's own entry points (subprocesses, `--jobs` at a time):
1. the cold start: the built-in one `python train.py` starts from (runs/cache/coldstart/final when
   coldstart.py built it there, else the shipped assets/coldstart, the same recipe's result), or
   `--cold-start DIR`;
2. the benchmark's data: `shortcut.make_shortcut_dataset(out/data, q=--q)`: size change and
   direction where the moving shape's colour agrees with the answer in a share q of the training
   clips, the static controls beside them, and four test splits (cue following, cue reversed, cue
   free, static controls);
3. per seed s, from that same cold start, with identical seeds and budgets (`train.py --preset tiny
   --data out/data/train.json --steps 60 --lr 1e-4 --seed s`: the same prompts in the same order for
   every variant), every variant of VARIANTS: plain GRPO, T-GRPO as the official code does it, the
   official trigger with the bonus on the advantages (so that normalisation cannot cancel it) and
   the strict contrast trigger there too;
4. `eval.py --shuffled true --template train` on the four test splits for the cold start and every
   RL checkpoint, per seed: ordered and shuffled frames, the prompt the policy was trained with,
   sampled like the rollout (temperature 1.0, top-p 0.95, top-k 50; seeded by s): what RL changes in
   this budget is the sampled policy (its answers sharpen), which near-greedy decoding of the cold
   start already shows;
5. the report: out/results.md and out/results.json (accuracy per split on ordered / shuffled frames,
   the ordered − shuffled gap on the cue-free split, shortcut reliance = accuracy on cue-following
   minus on cue-reversed clips (ordered frames); mean ± std over seeds) and out/curves.png (accuracy
   reward, trigger rate, p − p̃ and the bonus's shift of the advantages vs step; mean over seeds
   with a ±1 std band).
Stages whose output exists are skipped, so an interrupted run resumes; delete out/ to start over.
The defaults are the protocol, fixed on pilot seeds 10 and 11 before the reported run
(bench/evidence/README.md says what the pilots showed and why q, the steps and the learning rate are
what they are).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import builtin.cache  # noqa: E402
import builtin.coldstart  # noqa: E402
import distributed  # noqa: E402

# name -> extra train.py flags; the name is what tgrpo.Settings.name logs for those flags (checked
# by the report)
VARIANTS = {
    "GRPO[std]": ["--temporal", "false"],
    "T-GRPO[p>=0.8p~, reward, std]": [],                                    # the official code's
    # T8: the bonus survives normalisation
    "T-GRPO[p>=0.8p~, advantage, std]": ["--bonus-placement", "advantage"],
    # T11
    "T-GRPO[p>p~+0, advantage, std]": ["--temporal-trigger", "contrast",
                                       "--bonus-placement", "advantage"],
}
SLUG = {"GRPO[std]": "grpo", "T-GRPO[p>=0.8p~, reward, std]": "official",
        "T-GRPO[p>=0.8p~, advantage, std]": "official_adv",
        "T-GRPO[p>p~+0, advantage, std]": "contrast_adv"}
SPLITS = ("test_reversed", "test_free", "test_static", "test_following")
CURVES = (("accuracy", "accuracy reward (ordered rollouts)"),
          ("temporal_rate", "trigger rate (video groups)"),
          ("p_gap", "p − p̃ (video groups)"), ("bonus_adv_shift", "|shift of A_i| by the bonus"))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/evidence",
                    help="output folder (data, runs, evaluations, report)")
    ap.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds of the RL runs")
    ap.add_argument("--cold-start", default="",
                    help="HF folder every RL run starts from; empty: the built-in cold start "
                         "(coldstart.py, built once under --cache-dir)")
    ap.add_argument("--cache-dir", default="runs/cache",
                    help="where the built-in cold start is built once (train.py's too)")
    ap.add_argument("--q", type=float, default=0.8,
                    help="share of training cue-family clips whose colour follows the answer")
    ap.add_argument("--n-train", type=int, default=320,
                    help="benchmark training clips (half cue families, half static)")
    ap.add_argument("--n-test", type=int, default=80, help="clips per test split")
    ap.add_argument("--variants", default="",
                    help="comma-separated variants to run; empty: all of the protocol's (of: "
                    + ", ".join(f"{slug} = {v}" for v, slug in SLUG.items())
                    + "; shortcut-start also drgrpo)")
    ap.add_argument("--rl-steps", type=int, default=60,
                    help="optimizer steps of every RL run (4 prompts each)")
    ap.add_argument("--rl-lr", type=float, default=1e-4, help="learning rate of every RL run")
    ap.add_argument("--max-new-tokens", type=int, default=128,
                    help="evaluation: max new tokens per answer")
    ap.add_argument("--jobs", type=int, default=2,
                    help="subprocesses at a time (the cores split between them)")
    ap.add_argument("--smooth", type=int, default=5,
                    help="moving-average window of the curves, in steps")
    ap.add_argument("--report-only", action="store_true",
                    help="only rebuild results.md/json and curves.png")
    ap.add_argument("--protocol", default="cold-start", choices=["cold-start", "shortcut-start"],
                    help="cold-start: RL from the built-in cold start (this file); "
                         "shortcut-start: from a policy that "
                         "a further SFT stage put on the shortcut (bench/shortcut_start.py)")
    sc = ap.add_argument_group("shortcut-start (bench/shortcut_start.py)")
    sc.add_argument("--pilot", action="store_true",
                    help="measure on the validation split (seed-1 clips), for pilots")
    sc.add_argument("--sft-n", type=int, default=320, help="clips of the shortcut SFT stage")
    sc.add_argument("--sft-steps", type=int, default=200,
                    help="SFT steps of the shortcut start (8 clips each)")
    sc.add_argument("--sft-lr", type=float, default=1e-3,
                    help="SFT learning rate of the shortcut start")
    sc.add_argument("--margin", type=float, default=0.0,
                    help="the contrast trigger's margin: p > p~ + margin")
    sc.add_argument("--eval-every", type=int, default=20,
                    help="RL steps between the in-run held-out evaluations")
    sc.add_argument("--eval-n", type=int, default=40,
                    help="clips per held-out set in the in-run evaluations")
    return ap.parse_args(argv)


def run(cmd: list[str], log: Path, threads: int = 1) -> None:
    """Run one entry point (cwd = the repository) with `threads` torch threads, output to `log`.
    Raises RuntimeError naming the log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env=env)
    if rc != 0:
        raise RuntimeError(f"evidence: `{' '.join(cmd)}` failed with exit code {rc}; see {log}")
    print(f"  done in {time.perf_counter() - start:5.0f} s: {log.relative_to(log.parents[1])}",
          flush=True)


def pool(jobs: list[tuple[list[str], Path]], n: int) -> None:
    """Run (cmd, log) jobs n at a time (the machine's cores split between them); raise the first
    failure."""
    threads = max(1, (os.cpu_count() or 1) // max(1, min(n, len(jobs))))
    with ThreadPoolExecutor(max_workers=n) as ex:
        for fut in [ex.submit(run, cmd, log, threads) for cmd, log in jobs]:
            fut.result()


def cold_start(a: argparse.Namespace) -> Path:
    """The folder every RL run starts from: --cold-start, or the built-in cold start train.py takes:
    <cache-dir>'s build, else the shipped one (builtin.coldstart.existing_coldstart), else built
    (coldstart.py, logged to a file)."""
    if a.cold_start:
        return Path(a.cold_start).resolve()
    cache = Path(a.cache_dir).resolve()
    # the shipped one is taken only for this data
    builtin.cache.paths(cache, distributed.Dist(), model=False)
    found = builtin.coldstart.existing_coldstart(cache)      # what train.py takes (builtin.resolve)
    if found is None:
        found = builtin.coldstart.coldstart_dir(cache) / "final"
        print(f"stage 1: the built-in cold start -> {found} (once; python builtin/coldstart.py)",
              flush=True)
        run(["builtin/coldstart.py", "--cache-dir", str(cache)], cache / "coldstart.log",
            threads=os.cpu_count() or 1)
    return found


def chosen(names: str) -> dict[str, str]:
    """{variant name: slug} of the comma-separated slugs in `names`, in VARIANTS' order. Raises
    ValueError."""
    want = [x.strip() for x in names.split(",") if x.strip()] or list(SLUG.values())
    bad = [x for x in want if x not in SLUG.values()]
    if bad or not want:
        raise ValueError(f"evidence: --variants {names!r}: unknown {bad}; "
                         f"choose from {', '.join(SLUG.values())}")
    return {v: slug for v, slug in SLUG.items() if slug in want}


def stages(a: argparse.Namespace, out: Path, seeds: list[int], variants: dict[str, str]) -> None:
    """Stages 1-4; each skipped when its output exists."""
    from builtin.shortcut import make_shortcut_dataset

    start = cold_start(a)
    paths = make_shortcut_dataset(out / "data", q=a.q, n_train=a.n_train, n_test=a.n_test)
    (out / "cold_start.txt").write_text(str(start) + "\n")
    rl = [(["train.py", "--preset", "tiny", "--model", str(start), "--data", str(paths["train"]),
            "--steps", str(a.rl_steps),
            "--lr", str(a.rl_lr), "--seed", str(s), "--out-dir", str(out / f"s{s}" / slug),
            *VARIANTS[v], "--overwrite"],                      # a run cut short starts afresh
           out / f"s{s}" / f"{slug}.log") for s in seeds for v, slug in variants.items()
          if not (out / f"s{s}" / slug / "final" / "config.json").exists()]
    print(f"stage 3: RL ({len(rl)} to run)", flush=True)
    pool(rl, a.jobs)
    ev = []
    for s in seeds:
        for slug, model in {"coldstart": start,
                            **{x: out / f"s{s}" / x / "final" for x in variants.values()}}.items():
            dst = out / f"s{s}" / f"eval_{slug}"
            if all((dst / f"eval_{sp}_shuffled.json").exists() for sp in SPLITS):
                continue
            data = [x for sp in SPLITS for x in ("--data", str(paths[sp]))]
            ev.append((["eval.py", "--preset", "tiny", "--model", str(model), *data,
                        "--shuffled", "true", "--template", "train",
                        "--temperature", "1.0", "--top-p", "0.95", "--top-k", "50",
                        "--max-new-tokens", str(a.max_new_tokens),
                        "--seed", str(s), "--out-dir", str(dst)],
                       out / f"s{s}" / f"eval_{slug}.log"))
    print(f"stage 4: evaluation ({len(ev)} to run)", flush=True)
    pool(ev, a.jobs)


def split_accuracy(folder: Path) -> dict[str, float]:
    """{"<split>/<order>": accuracy} and {"<split>/<family>/<order>": accuracy} from an eval
    folder's records (bench/seeing.py's `accuracies`; every split holds one category, temporal or
    static, whose accuracy is the split's), plus "gap" and "reliance"."""
    from seeing import accuracies

    out = {}
    for sp in SPLITS:
        acc = accuracies(folder, (("ordered", f"eval_{sp}.records.jsonl"),
                                  ("shuffled", f"eval_{sp}_shuffled.records.jsonl")))
        out |= {f"{sp}/{order}" if group in ("temporal", "static") else f"{sp}/{group}/{order}": v
                for (order, group), v in acc.items()}
    out["gap"] = out["test_free/ordered"] - out["test_free/shuffled"]
    out["reliance"] = out["test_following/ordered"] - out["test_reversed/ordered"]
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


COLUMNS = (("test_reversed/ordered", "cue reversed, ordered"),
           ("test_reversed/shuffled", "cue reversed, shuffled"),
           ("test_free/ordered", "cue free, ordered"), ("test_free/shuffled", "cue free, shuffled"),
           ("gap", "gap (free)"), ("test_following/ordered", "cue following, ordered"),
           ("reliance", "shortcut reliance"), ("test_static/ordered", "static, ordered"),
           ("test_static/shuffled", "static, shuffled"))


def report(out: Path, seeds: list[int], variants: dict[str, str]) -> dict:
    """Write results.json and results.md; return {model: {key: [per-seed values]}}
    (+ "training").
    Raises ValueError when a run's logged variant differs from its row's name."""
    rows = {"cold start": [out / f"s{s}" / "eval_coldstart" for s in seeds]}
    rows |= {v: [out / f"s{s}" / f"eval_{slug}" for s in seeds] for v, slug in variants.items()}
    for v, slug in variants.items():
        for s in seeds:
            logged = json.loads((out / f"s{s}" / slug / "config.json").read_text())["variant"]
            if logged != v:
                raise ValueError(f"evidence: {out / f's{s}' / slug / 'config.json'}: "
                                 f"variant {logged!r}, expected {v!r}")
    table = {m: {} for m in rows}
    for m, folders in rows.items():
        for folder in folders:
            for k, x in split_accuracy(folder).items():
                table[m].setdefault(k, []).append(x)
    pct = lambda xs: "%.1f ± %.1f" % tuple(100 * x for x in mean_std(xs))
    lines = [f"Seeds {', '.join(map(str, seeds))}; accuracy in %, "
             f"mean ± std over the seeds' RL runs (n = {len(seeds)}); "
             "the cold start is one model, evaluated with each seed's sampling.", "",
             "| model | " + " | ".join(c for _, c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    lines += [f"| {m} | " + " | ".join(pct(table[m][k]) for k, _ in COLUMNS) + " |" for m in rows]
    lines += ["",
              "Per family (cue reversed / cue free / cue following, ordered frames), "
              "mean over seeds, %:", "",
              "| model | size change | direction |", "|---|---|---|"]
    fam = lambda m, f: " / ".join("%.0f" % (100 * statistics.fmean(table[m][f"{sp}/{f}/ordered"]))
                                 for sp in ("test_reversed", "test_free", "test_following"))
    lines += [f"| {m} | {fam(m, 'size_change')} | {fam(m, 'direction')} |" for m in rows]
    lines += ["",
              "Per seed: accuracy on cue-reversed clips, ordered frames, and shortcut reliance, "
              "in points:", "",
              "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    lines += [f"| {m} | " + " | ".join("%.1f, %+.1f" % (100 * r, 100 * g) for r, g in
                                       zip(table[m]["test_reversed/ordered"], table[m]["reliance"]))
              + " |" for m in variants]
    lines += ["",
              "Training side (mean over all steps and seeds; video-group terms over steps with a "
              "video group):",
              "accuracy reward, the bonus's trigger rate, p − p̃ (ordered minus shuffled rollout "
              "accuracy) and the mean",
              "|change| the bonus made to the advantages of video completions (0 where group "
              "normalisation cancels it).", "",
              "| variant | accuracy reward | trigger rate | p − p̃ | bonus shift of advantages |",
              "|---|---|---|---|---|"]
    train_side = {}
    for v, slug in variants.items():
        # step rows (not held-out evaluation rows)
        steps = [r for s in seeds
                 for r in map(json.loads,
                              (out / f"s{s}" / slug / "metrics.jsonl").read_text().splitlines())
                 if "accuracy" in r]
        vid = [r for r in steps if "p" in r]
        avg = lambda key, rs: statistics.fmean(r[key] for r in rs) if rs else float("nan")
        t = train_side[v] = {"accuracy": avg("accuracy", steps),
                             "temporal_rate": avg("temporal_rate", vid),
                             "p_minus_p_shuffled": (statistics.fmean(r["p"] - r["p_shuffled"]
                                                                     for r in vid)
                                                    if vid else float("nan")),
                             "bonus_adv_shift": avg("bonus_adv_shift", vid)}
        lines.append(f"| {v} | {t['accuracy']:.3f} | "
                     + (" | ".join(f"{t[k]:.3f}" for k in ("temporal_rate", "p_minus_p_shuffled",
                                                           "bonus_adv_shift"))
                        if vid else "– | – | –")
                     + " |")
    table["training"] = train_side
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "table": table}, indent=1) + "\n")
    return table


def curves(out: Path, seeds: list[int], variants: dict[str, str], smooth: int) -> Path:
    """Plot the RL training curves (mean over seeds, ±1 std band) to out/curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.6 * len(CURVES), 3.6))
    for i, (v, slug) in enumerate(variants.items()):
        runs = []
        for s in seeds:
            rows = [json.loads(x)
                    for x in (out / f"s{s}" / slug / "metrics.jsonl").read_text().splitlines()]
            runs.append([r | ({"p_gap": r["p"] - r["p_shuffled"]} if "p" in r else {})
                         for r in rows if "accuracy" in r])
        n = min(len(r) for r in runs)
        for ax, (key, title) in zip(axes, CURVES):
            # the video-group terms are logged only for steps with a video group (NaN otherwise,
            # filled by the run's mean)
            vals = np.array([[r.get(key, np.nan) for r in run[:n]] for run in runs],
                            dtype=float)                               # (seeds, steps)
            if not np.isfinite(vals).any() or (key != "accuracy" and slug == "grpo"):
                continue                        # plain GRPO has no shuffled group, hence no trigger
            k = max(1, min(smooth, n))
            sm = np.array([np.convolve(np.nan_to_num(x, nan=np.nanmean(x) if np.isfinite(x).any()
                                                     else 0.0),
                                       np.ones(k) / k, mode="valid") for x in vals])
            steps = np.arange(k, n + 1)
            mu, sd = sm.mean(0), sm.std(0)
            ax.plot(steps, mu, label=v, color=f"C{i}")  # one colour per variant in every panel
            ax.fill_between(steps, mu - sd, mu + sd, alpha=0.2, color=f"C{i}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    a = parse(argv)
    if a.protocol == "shortcut-start":
        import shortcut_start
        start = time.perf_counter()
        shortcut_start.main(a)
        print(f"({time.perf_counter() - start:.0f} s) command: python bench/evidence.py "
              + " ".join(argv if argv is not None else sys.argv[1:]))
        return
    out = Path(a.out).resolve()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    variants = chosen(a.variants)
    start = time.perf_counter()
    if not a.report_only:
        stages(a, out, seeds, variants)
    report(out, seeds, variants)
    png = curves(out, seeds, variants, a.smooth)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, {out / 'results.json'}, {png}  "
          f"({time.perf_counter() - start:.0f} s)")
    print("command: python bench/evidence.py "
          + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
