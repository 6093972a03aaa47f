"""Evidence that it learns: SFT -> T-GRPO vs SFT -> GRPO on the built-in temporal benchmark, on a CPU.

    python bench/evidence.py                                  # the full comparison (3 seeds; see bench/README.md
                                                              # for its wall time on 2 CPU cores)
    python bench/evidence.py --seeds 0 --sft-epochs 0.05 --rl-steps 2 --n-train 48 --n-test 16 \
        --out runs/evidence-smoke                             # the smoke run the tests use (about a minute)
    python bench/evidence.py --report-only                    # re-aggregate an existing --out folder

What it runs, every stage through the project's own entry points (subprocesses, `--jobs` at a time, one torch
thread each):
1. the built-in data (`synthetic.make_dataset(out/data, n_train, n_test)`) and the tiny model
   (`tiny.build_builtin_tiny`), once;
2. SFT once: `sft.py --preset tiny --epochs E --seed S` on the COT split -> out/sft/final (one SFT shared by
   all seeds: at this size SFT takes most of the budget; the seeds vary the RL stage and the evaluation);
3. per seed s, from that same SFT checkpoint, with identical seeds and budgets (`train.py --preset tiny --lr LR
   --steps N --seed s`): plain GRPO (`--temporal false`), T-GRPO as the official code places the bonus
   (added to the reward before group normalisation) and T-GRPO with the bonus added to the advantages
   (`--bonus-placement advantage`; notes §1 explains why the first can cancel);
4. `eval.py --shuffled true --template train` on the held-out split for SFT and each RL checkpoint (per
   seed): ordered and shuffled frames, the prompt the policy was trained with (the tiny model has never seen
   the official eval prompt, which starts it on "<answer>"), sampled like the T-GRPO rollout (temperature
   1.0, top-p 0.95; near-greedy decoding of a tiny model mostly repeats itself), seeded by s;
5. the report: out/results.md and out/results.json (accuracy on ordered / shuffled frames and the gap, for
   order-dependent ("synthetic/temporal/...") and static questions, mean ± std over seeds; per-family
   accuracies) and out/curves.png (accuracy reward, temporal-bonus trigger rate, completion length vs step,
   mean over seeds with a ±1 std band, smoothed over `--smooth` steps).
Stages whose output exists are skipped, so an interrupted run resumes; delete out/ to start over.
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
from seeing import accuracies, reasoning  # noqa: E402  (bench/seeing.py: the one place they live)

VARIANTS = {  # name -> extra train.py flags
    "GRPO": ["--temporal", "false"],
    "T-GRPO": [],
    "T-GRPO (bonus on advantages)": ["--bonus-placement", "advantage"],
}
SLUG = {"GRPO": "grpo", "T-GRPO": "tgrpo", "T-GRPO (bonus on advantages)": "tgrpo_adv"}
CURVES = (("accuracy", "accuracy reward (ordered rollouts)"), ("temporal_rate", "temporal-bonus trigger rate (video groups)"),
          ("completion_length", "completion length (tokens)"))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/evidence", help="output folder (data, model, runs, report)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each runs SFT, every variant and eval")
    ap.add_argument("--sft-seed", type=int, default=0, help="seed of the one SFT run")
    ap.add_argument("--n-train", type=int, default=2000, help="built-in training samples (SFT uses the COT copy)")
    ap.add_argument("--n-test", type=int, default=480, help="held-out samples for the evaluation (~205 order-dependent)")
    ap.add_argument("--sft-epochs", type=float, default=6.0, help="SFT passes over the COT split")
    ap.add_argument("--rl-steps", type=int, default=60, help="optimizer steps of every RL variant")
    ap.add_argument("--rl-lr", type=float, default=1e-4,
                    help="learning rate of every RL variant (the tiny preset's 2e-5 leaves the SFT policy unchanged: KL ~1e-4 "
                         "after 60 steps; 5e-4 collapses it; see the README's evidence section)")
    ap.add_argument("--jobs", type=int, default=2, help="subprocesses at a time (each with one torch thread)")
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window of the curves, in steps")
    ap.add_argument("--report-only", action="store_true", help="only rebuild results.md/json and curves.png")
    return ap.parse_args(argv)


def run(cmd: list[str], log: Path, threads: int = 1) -> None:
    """Run one entry point (cwd = the repository) with `threads` torch threads, output to `log`.
    Raises RuntimeError naming the log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f"evidence: `{' '.join(cmd)}` failed with exit code {rc}; see {log}")
    print(f"  done in {time.perf_counter() - start:5.0f} s: {' '.join(cmd[:1] + cmd[-4:])}", flush=True)


def pool(jobs: list[tuple[list[str], Path]], n: int) -> None:
    """Run (cmd, log) jobs n at a time (the machine's cores split between them); raise the first failure."""
    threads = max(1, (os.cpu_count() or 1) // max(1, min(n, len(jobs))))
    with ThreadPoolExecutor(max_workers=n) as ex:
        for fut in [ex.submit(run, cmd, log, threads) for cmd, log in jobs]:
            fut.result()


def stages(a: argparse.Namespace, out: Path, seeds: list[int]) -> None:
    """Stages 1-4; each skipped when its output exists."""
    import synthetic
    from tiny import build_builtin_tiny

    paths = synthetic.make_dataset(out / "data", n_train=a.n_train, n_test=a.n_test)
    tiny = build_builtin_tiny(out / "tiny", paths["train_cot"])
    common = ["--preset", "tiny"]
    sft = [(["sft.py", "--model", str(tiny), "--data", str(paths["train_cot"]), "--eval-data", str(paths["test"]),
             "--epochs", str(a.sft_epochs), "--seed", str(a.sft_seed), "--out-dir", str(out / "sft"), *common],
            out / "sft.log")] if not (out / "sft" / "final" / "config.json").exists() else []
    print(f"stage 2: SFT ({len(sft)} to run)", flush=True)
    pool(sft, a.jobs)
    rl = [(["train.py", "--model", str(out / "sft" / "final"), "--data", str(paths["train"]),
            "--steps", str(a.rl_steps), "--lr", str(a.rl_lr), "--seed", str(s), "--out-dir", str(out / f"s{s}" / SLUG[v]), *VARIANTS[v], *common],
           out / f"s{s}" / f"{SLUG[v]}.log") for s in seeds for v in VARIANTS
          if not (out / f"s{s}" / SLUG[v] / "final" / "config.json").exists()]
    print(f"stage 3: RL ({len(rl)} to run)", flush=True)
    pool(rl, a.jobs)
    ev = []
    for s in seeds:
        for name in ["sft", *SLUG.values()]:
            dst = out / f"s{s}" / f"eval_{name}"
            if not (dst / "eval_test_shuffled.json").exists():
                model = out / "sft" if name == "sft" else out / f"s{s}" / name
                ev.append((["eval.py", "--model", str(model / "final"), "--data", str(paths["test"]),
                            "--shuffled", "true", "--template", "train", "--temperature", "1.0", "--top-p", "0.95", "--max-new-tokens", "128",
                            "--seed", str(s), "--out-dir", str(dst), "--preset", "tiny"], out / f"s{s}" / f"eval_{name}.log"))
    print(f"stage 4: evaluation ({len(ev)} to run)", flush=True)
    pool(ev, a.jobs)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def report(out: Path, seeds: list[int]) -> dict:
    """Write results.json and results.md; return the aggregated table {model: {key: [per-seed values]}}."""
    models = {"SFT": "sft", **SLUG}
    table: dict = {m: {} for m in models}
    for m, slug in models.items():
        for s in seeds:
            acc = accuracies(out / f"s{s}" / f"eval_{slug}")
            for (order, g), v in acc.items():
                table[m].setdefault(f"{g}/{order}", []).append(v)
            for g in ("temporal", "static"):
                table[m].setdefault(f"{g}/gap", []).append(acc[("ordered", g)] - acc[("shuffled", g)])
    fmt = lambda xs: "%.1f ± %.1f" % tuple(100 * x for x in mean_std(xs))
    lines = [f"Seeds {', '.join(map(str, seeds))}; accuracy in %, mean ± std over seeds (n = {len(seeds)}).", "",
             "| model | temporal, ordered | temporal, shuffled | temporal gap | static, ordered | static, shuffled | static gap |",
             "|---|---|---|---|---|---|---|"]
    for m in models:
        t = table[m]
        lines.append(f"| {m} | " + " | ".join(fmt(t[k]) for k in ("temporal/ordered", "temporal/shuffled", "temporal/gap",
                                                                    "static/ordered", "static/shuffled", "static/gap")) + " |")
    fams = sorted({k.split("/")[0] for k in table["SFT"]} - {"temporal", "static"})
    lines += ["", "Per family, ordered frames (shuffled in brackets):", "",
              "| model | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for m in models:
        t = table[m]
        lines.append(f"| {m} | " + " | ".join("%.0f (%.0f)" % (100 * statistics.fmean(t[f"{f}/ordered"]),
                                                             100 * statistics.fmean(t[f"{f}/shuffled"])) for f in fams) + " |")
    test = {e["problem_id"]: e for e in json.loads((out / "data" / "test.json").read_text())}
    said = {m: [reasoning(out / f"s{s}" / f"eval_{slug}", test) for s in seeds] for m, slug in models.items()}
    lines += ["", "Seeing vs answering, per family: how often the reasoning states the right answer (in the words of",
              "the built-in chain of thought: scenes.stated_answer) on ordered frames, [shuffled frames], and how often",
              "the final answer is the one the reasoning states (ordered frames); mean over seeds, %:", "",
              "| model | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for m in models:
        cell = lambda f: "%.0f [%.0f], %.0f" % tuple(100 * statistics.fmean(r[(o, f)][i] for r in said[m])
                                                      for o, i in (("ordered", 0), ("shuffled", 0), ("ordered", 1)))
        lines.append(f"| {m} | " + " | ".join(cell(f) for f in fams) + " |")
        table[m]["reasoning"] = {f"{f}/{o}": [r[(o, f)] for r in said[m]] for f in fams for o in ("ordered", "shuffled")}
    lines += ["", "Temporal gap (ordered − shuffled accuracy on order-dependent questions) per seed, in points:", "",
              "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join("%+.1f" % (100 * g) for g in table[m]["temporal/gap"]) + " |")
    lines += ["", "Training side (mean over all steps and seeds; video-group terms over steps with a video group): the",
              "bonus's trigger rate, ordered minus shuffled rollout accuracy p − p̃, and the mean |change| the bonus",
              "made to the advantages of video completions (0 when group normalisation cancels it, notes §1).", "",
              "| variant | accuracy reward | trigger rate | p − p̃ | bonus shift of advantages |", "|---|---|---|---|---|"]
    train_side = {}
    for v, slug in SLUG.items():
        rows = [json.loads(x) for s in seeds for x in (out / f"s{s}" / slug / "metrics.jsonl").read_text().splitlines()]
        avg = lambda key, rs: statistics.fmean(r[key] for r in rs) if rs else float("nan")
        vid = [r for r in rows if "p" in r]
        train_side[v] = {"accuracy": avg("accuracy", rows), "temporal_rate": avg("temporal_rate", vid),
                         "p_minus_p_shuffled": statistics.fmean(r["p"] - r["p_shuffled"] for r in vid) if vid else float("nan"),
                         "bonus_adv_shift": avg("bonus_adv_shift", vid)}
        t = train_side[v]
        lines.append(f"| {v} | {t['accuracy']:.3f} | " + (" | ".join(f"{t[k]:.3f}" for k in ("temporal_rate", "p_minus_p_shuffled", "bonus_adv_shift"))
                                                         if vid else "– | – | –") + " |")
    table["training"] = train_side
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "table": table}, indent=1) + "\n")
    return table


def curves(out: Path, seeds: list[int], smooth: int) -> Path:
    """Plot the RL training curves (mean over seeds, ±1 std band) to out/curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for i, (v, slug) in enumerate(SLUG.items()):
        runs = []
        for s in seeds:
            rows = [json.loads(x) for x in (out / f"s{s}" / slug / "metrics.jsonl").read_text().splitlines()]
            runs.append([r for r in rows if "accuracy" in r])
        n = min(len(r) for r in runs)
        for ax, (key, title) in zip(axes, CURVES):
            if key == "temporal_rate" and slug == "grpo":
                continue   # plain GRPO has no shuffled group, hence no trigger
            # temporal_rate is logged only for steps with a video group (NaN otherwise, filled by the run's mean)
            vals = np.array([[r.get(key, np.nan) for r in run[:n]] for run in runs], dtype=float)   # (seeds, steps)
            k = max(1, min(smooth, n))
            sm = np.array([np.convolve(np.nan_to_num(x, nan=np.nanmean(x) if np.isfinite(x).any() else 0.0),
                                       np.ones(k) / k, mode="valid") for x in vals])
            steps = np.arange(k, n + 1)
            mu, sd = sm.mean(0), sm.std(0)
            ax.plot(steps, mu, label=v, color=f"C{i}")   # one colour per variant in every panel
            ax.fill_between(steps, mu - sd, mu + sd, alpha=0.2, color=f"C{i}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    a = parse(argv)
    out = Path(a.out).resolve()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    start = time.perf_counter()
    if not a.report_only:
        stages(a, out, seeds)
    report(out, seeds)
    png = curves(out, seeds, a.smooth)
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, {out / 'results.json'}, {png}  ({time.perf_counter() - start:.0f} s)")
    print("command: python bench/evidence.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
