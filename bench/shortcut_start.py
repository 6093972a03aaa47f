"""The shortcut-start protocol: does T-GRPO move a policy that STARTS on a static shortcut off it
faster than GRPO? (`python bench/evidence.py --protocol shortcut-start`; bench/evidence/README.md
§ shortcut start.)

    python bench/evidence.py --protocol shortcut-start            # the reported run (seeds 0-3,
                                                                  # test splits)
    python bench/evidence.py --protocol shortcut-start --pilot --seeds 10,11 --out runs/pilot
                                                                  # pilots: validation split

The defaults are the protocol, fixed on pilot seeds 10 and 11 on the validation split before the
reported run (bench/evidence/README.md § shortcut start: what the pilots showed).

The earlier comparison (bench/evidence.py's default protocol) could not test the paper's claim: its
cold start never used the shortcut. Here a further SFT stage first teaches it, then RL runs from
there:
1. the built-in cold start (evidence.cold_start);
2. the shortcut start: `sft.py` from the cold start on shortcut.make_shortcut_sft's clips (the
   colour always follows the answer and the frames are in a random order, so the colour is the only
   predictor; static controls beside them), `--sft-steps` steps at `--sft-lr`;
3. the benchmark of evidence.py (shortcut.make_shortcut_dataset, q = --q) for RL training and the
   reported test splits, and a second rendering (seed 1, its own clips) whose test splits are the
   validation split: pilots choose the settings there, and the reported run is measured on the test
   splits only;
4. the start measured on ordered and shuffled frames (eval.py, sampled like the rollout): shortcut
   reliance (cue-following − cue-reversed accuracy, ordered) and cue-reversed accuracy against
   chance (50 %);
5. per seed, every variant of VARIANTS from the shortcut start with the same seed, prompts and
   budget, the held-out sets (reversed, following, free, static: 40 clips each of the split the run
   is measured on) evaluated every --eval-every steps inside the run (train.py's named --eval-data
   sets), so reliance is drawn against step;
6. every final policy on the four splits, ordered and shuffled (eval.py);
7. results.json: one record per RL run (protocol, variant, seed, start and end reliance, accuracies
   on ordered and shuffled frames, the trigger rate, p − p̃ and the bonus's shift of the
   advantages), results.md and reliance.png (reliance and cue-reversed accuracy against step, mean
   over seeds ± std).
Stages whose output exists are skipped (an interrupted run resumes).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import evidence

PROTOCOL = "shortcut-start"
# variant name (as tgrpo.Settings.name logs it) -> train.py flags; the margin of the contrast
# trigger is --margin
VARIANTS = {
    "GRPO[std]": ["--temporal", "false"],
    "T-GRPO[p>=0.8p~, reward, std]": [],                                     # the official code's
    "T-GRPO[p>=0.8p~, advantage, std]": ["--bonus-placement", "advantage"],  # T8
    "T-GRPO[p>=0.8p~, reward, none]": ["--adv-scale", "none"],               # Dr. GRPO's unscaled A
    # T11, named with its margin
    "contrast": ["--temporal-trigger", "contrast", "--bonus-placement", "advantage"],
}
SLUG = {"GRPO[std]": "grpo", "T-GRPO[p>=0.8p~, reward, std]": "official",
        "T-GRPO[p>=0.8p~, advantage, std]": "official_adv",
        "T-GRPO[p>=0.8p~, reward, none]": "drgrpo", "contrast": "contrast_adv"}
SETS = {"reversed": "test_reversed", "following": "test_following", "free": "test_free",
        "static": "test_static"}


def variants(margin: float, slugs: str = "") -> dict[str, tuple[str, list[str]]]:
    """{logged name: (slug, train.py flags)} of the comma-separated `slugs` (empty: all), the
    contrast variant named with `margin`. Raises ValueError for an unknown slug."""
    want = [x.strip() for x in slugs.split(",") if x.strip()] or list(SLUG.values())
    if set(want) - set(SLUG.values()):
        raise ValueError(f"shortcut-start: --variants {slugs!r}: "
                         f"choose from {', '.join(SLUG.values())}")
    out = {}
    for name, flags in VARIANTS.items():
        if SLUG[name] not in want:
            continue
        if name == "contrast":
            name, flags = (f"T-GRPO[p>p~+{margin:g}, advantage, std]",
                           flags + ["--trigger-margin", str(margin)])
        out[name] = (SLUG["contrast" if name.startswith("T-GRPO[p>p~") else name], flags)
    return out


def stages(a, out: Path, seeds: list[int], runs: dict) -> dict:
    """Stages 1-6 (each skipped when its output exists). Returns the splits measured on ({set: JSON
    path})."""
    from builtin.shortcut import make_shortcut_dataset, make_shortcut_sft

    cold = evidence.cold_start(a)
    sft_json = make_shortcut_sft(out / "sft_data", n=a.sft_n)
    start = out / "shortcut_start"
    if not (start / "final" / "config.json").exists():
        print(f"stage 2: the shortcut start ({a.sft_steps} SFT steps at lr {a.sft_lr:g})",
              flush=True)
        evidence.run(["sft.py", "--preset", "tiny", "--model", str(cold), "--data", str(sft_json),
                      "--steps", str(a.sft_steps), "--lr", str(a.sft_lr), "--eval-samples", "0",
                      "--out-dir", str(start), "--overwrite"],  # a run cut short starts afresh
                     out / "shortcut_start.log", threads=2)
    bench = make_shortcut_dataset(out / "data", q=a.q, n_train=a.n_train, n_test=a.n_test)
    val = make_shortcut_dataset(out / "val", seed=1, q=a.q, n_train=2, n_test=a.n_test)
    measured = val if a.pilot else bench
    held = [x for name, split in SETS.items() for x in ("--eval-data", f"{name}={measured[split]}")]
    jobs = [(["train.py", "--preset", "tiny", "--model", str(start / "final"),
              "--data", str(bench["train"]),
              "--steps", str(a.rl_steps), "--lr", str(a.rl_lr), "--seed", str(s),
              "--eval-samples", str(a.eval_n),
              "--eval-every", str(a.eval_every), *held, "--out-dir", str(out / f"s{s}" / slug),
              *flags, "--overwrite"],                          # a run cut short starts afresh
             out / f"s{s}" / f"{slug}.log") for s in seeds for slug, flags in runs.values()
            if not (out / f"s{s}" / slug / "final" / "config.json").exists()]
    print(f"stage 5: RL ({len(jobs)} to run)", flush=True)
    evidence.pool(jobs, a.jobs)
    ev = []
    for s in seeds:
        for slug, model in {"start": start / "final",
                            **{x: out / f"s{s}" / x / "final" for x, _ in runs.values()}}.items():
            dst = out / f"s{s}" / f"eval_{slug}"
            if all((dst / f"eval_{sp}_shuffled.json").exists() for sp in evidence.SPLITS):
                continue
            data = [x for sp in evidence.SPLITS for x in ("--data", str(measured[sp]))]
            ev.append((["eval.py", "--preset", "tiny", "--model", str(model), *data,
                        "--shuffled", "true", "--template",
                        "train", "--temperature", "1.0", "--top-p", "0.95", "--top-k", "50",
                        "--max-new-tokens",
                        str(a.max_new_tokens), "--seed", str(s), "--out-dir", str(dst)],
                       out / f"s{s}" / f"eval_{slug}.log"))
    print(f"stage 6: evaluation ({len(ev)} to run)", flush=True)
    evidence.pool(ev, a.jobs)
    return measured


def held_curve(metrics: Path) -> list[dict]:
    """The in-run held-out rows of a run: [{"step", "reliance" (points), "reversed", "following",
    "free", "static" (accuracy, %)}], from train.py's eval_accuracy/NAME keys."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    out = []
    for r in rows:
        if "eval_accuracy/reversed" in r:
            acc = {n: 100 * r[f"eval_accuracy/{n}"] for n in SETS}
            out.append({"step": r["step"], "reliance": acc["following"] - acc["reversed"], **acc})
    return out


def report(out: Path, seeds: list[int], runs: dict, split_name: str) -> list[dict]:
    """results.json (one record per RL run, and the start per seed) and results.md. Raises
    ValueError when a run's logged variant differs from its name."""
    records, start = [], {s: evidence.split_accuracy(out / f"s{s}" / "eval_start") for s in seeds}
    for name, (slug, _) in runs.items():
        for s in seeds:
            run = out / f"s{s}" / slug
            logged = json.loads((run / "config.json").read_text())["variant"]
            if logged != name:
                raise ValueError(f"shortcut-start: {run / 'config.json'}: variant {logged!r}, "
                                 f"expected {name!r}")
            end = evidence.split_accuracy(out / f"s{s}" / f"eval_{slug}")
            steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if "accuracy" in r]
            vid = [r for r in steps if "p" in r]
            mean = lambda f: statistics.fmean(map(f, vid)) if vid else None
            records.append({
                "protocol": PROTOCOL, "variant": name, "seed": s, "measured_on": split_name,
                "start_reliance": 100 * start[s]["reliance"], "end_reliance": 100 * end["reliance"],
                **{f"{k.replace('test_', '').replace('/', '_')}": 100 * v for k, v in end.items()
                   if k.count("/") == 1},
                "trigger_rate": mean(lambda r: r["temporal_rate"]),
                "p_minus_p_shuffled": mean(lambda r: r["p"] - r["p_shuffled"]),
                "bonus_adv_shift": mean(lambda r: r.get("bonus_adv_shift", 0.0)),
                "curve": held_curve(run / "metrics.jsonl")})
    starts = [{"seed": s, **{k.replace("test_", "").replace("/", "_"): 100 * v
                             for k, v in start[s].items() if k.count("/") == 1},
               "reliance": 100 * start[s]["reliance"]} for s in seeds]
    (out / "results.json").write_text(json.dumps({"protocol": PROTOCOL, "measured_on": split_name,
                                                  "seeds": seeds, "start": starts, "runs": records},
                                                 indent=1) + "\n")
    ms = lambda xs: "%.1f ± %.1f" % evidence.mean_std(xs)
    st = lambda k: ms([x[k] for x in starts])
    lines = [f"Protocol {PROTOCOL}, measured on the {split_name} splits; "
             f"seeds {', '.join(map(str, seeds))}; % (mean ± std "
             "over seeds; the start is one model, evaluated with each seed's sampling).", "",
             f"Start (shortcut SFT): reliance {st('reliance')} points; "
             f"cue reversed, ordered {st('reversed_ordered')}, "
             f"shuffled {st('reversed_shuffled')}; "
             f"cue free, ordered {st('free_ordered')}, shuffled "
             f"{st('free_shuffled')}; static, ordered {st('static_ordered')}; "
             f"cue following, ordered "
             f"{st('following_ordered')}.", "",
             "| variant | end reliance | Δ reliance vs GRPO (paired) | cue reversed, ordered | "
             "cue reversed, shuffled | "
             "cue free, ordered | cue free, shuffled | static, ordered | trigger rate | p − p̃ | "
             "bonus shift of A |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {name: [r for r in records if r["variant"] == name] for name in runs}
    grpo = {r["seed"]: r for r in by.get("GRPO[std]", [])}
    for name, rs in by.items():
        delta = [r["end_reliance"] - grpo[r["seed"]]["end_reliance"]
                 for r in rs if r["seed"] in grpo]
        side = lambda k: ("%.3f ± %.3f" % evidence.mean_std([r[k] for r in rs])
                          if rs[0][k] is not None else "–")
        lines.append(f"| {name} | {ms([r['end_reliance'] for r in rs])} | "
                     + (f"{ms(delta)} ({sum(d < 0 for d in delta)}/{len(delta)} lower)"
                        if name != "GRPO[std]" else "–")
                     + " | " + " | ".join(ms([r[k] for r in rs])
                                          for k in ("reversed_ordered", "reversed_shuffled",
                                                    "free_ordered", "free_shuffled",
                                                    "static_ordered"))
                     + f" | {side('trigger_rate')} | {side('p_minus_p_shuffled')} | "
                       f"{side('bonus_adv_shift')} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return records


def draw(out: Path, records: list[dict]) -> Path:
    """reliance.png: in-run held-out shortcut reliance and cue-reversed accuracy against step, per
    variant (mean over seeds, ±1 std band)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(dict.fromkeys(r["variant"] for r in records))
    for i, name in enumerate(names):
        curves = [r["curve"] for r in records if r["variant"] == name]
        n = min(len(c) for c in curves)
        steps = [p["step"] for p in curves[0][:n]]
        for ax, key, title in ((axes[0], "reliance", "shortcut reliance (points)"),
                               (axes[1], "reversed", "cue-reversed accuracy (%)")):
            y = np.array([[p[key] for p in c[:n]] for c in curves])
            ax.plot(steps, y.mean(0), "o-", ms=3, color=f"C{i}", label=name)
            ax.fill_between(steps, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=f"C{i}",
                            alpha=0.15)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("RL step")
    axes[1].axhline(50, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "reliance.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(a) -> None:
    """Run the protocol with evidence.py's parsed arguments `a` (its shortcut-start options
    included)."""
    out = Path(a.out).resolve()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    runs = variants(a.margin, a.variants)
    if not a.report_only:
        stages(a, out, seeds, runs)
    records = report(out, seeds, runs, "validation" if a.pilot else "test")
    print((out / "results.md").read_text())
    print(f"written: {out / 'results.md'}, {out / 'results.json'}, {draw(out, records)}")
