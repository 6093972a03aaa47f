"""The built-in cold start: the tiny default learns to see (stage 0, ours), then to reason (stage 1,
Video-R1's SFT).

    python builtin/coldstart.py  # runs/cache/coldstart/final, ~7.5 min on 2 CPU cores (once)
    python builtin/coldstart.py --perception-epochs 0 --temporal-steps 0
                                 # Video-R1's recipe alone: COT SFT of the random tiny model
    python train.py              # T-GRPO from it (from the shipped copy when it was not built here)
    python bench/seeing.py       # what the result sees, per question family
    rm -r assets/coldstart && cp -r runs/cache/coldstart/final assets/coldstart
                                 # ship a rebuilt one (commit it)

assets/coldstart is this command's result at the default settings, committed (10 MB), so that a
first `python train.py` spends its minutes on T-GRPO; its RECORD file (`record`) says what made it,
and tests/test_coldstart.py fails when the recipe's defaults, the built-in data or the tiny default
change without a rebuilt copy. A folder built here (runs/cache/coldstart/final) takes precedence
over it (`find_or_build`).

The built-in recipe (D8 in docs/departures.md; for the tiny default only) has four stages:
  0. perception SFT (ours): `sft.py` on the built-in perception split, where the reasoning is only
     the right answer's words ("<think>bigger</think>"); a few-million-parameter decoder trained
     from scratch on the chain of thought learns its text and not the pixels, while on answers that
     start with what is seen it learns to read the frozen vision features (scenes.py's docstring
     gives the measurement);
  0b. temporal SFT (ours): `--temporal-steps` more steps on the same split's order-dependent
     families alone.
     Measured (200 held-out clips, one seed each): stage 0 alone learns the static families (colour
     0.97) and no order-dependent one (size change answered 0.50, chance); the same 720 steps with
     60-75 % of the samples order-dependent learned size change 0.68-0.86 but lost colour
     (0.21-0.37); stage 0 then 360 steps of 0b answered size change 1.00 on ordered and 0.50 on
     shuffled frames, and after stage 1 still 1.00 / 0.55 with colour back at 0.95 (stage 1's mix of
     static samples restores what 0b overwrote);
  1. COT SFT (Video-R1 stage 1): `sft.py` on the built-in COT split, starting from stage 0b's
     export, with `--cot-perception` perception samples mixed in (the COT reasoning starts with the
     same words, so the two agree; without them the COT stage undoes much of stage 0: scenes.py's
     docstring, "Reasoning");
  2. T-GRPO (Video-R1 stage 2): `train.py --model runs/cache/coldstart/final` -- what `python
     train.py` does (from the shipped copy, assets/coldstart, when nothing was built here).
Each stage is a plain `sft.py` run (a subprocess, its own metrics.jsonl and curves.png under
out/<stage>/) so that nothing here re-implements training; a stage whose export exists is not run
again. The vision tower stays frozen in every stage (common.SFT_TINY says why), so every exported
folder is a plain Qwen2.5-VL.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):   # run as a script (python builtin/coldstart.py): the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config as cfglib  # noqa: E402
import distributed  # noqa: E402
from builtin import cache  # noqa: E402

# the repository: sft.py and the children's working folder
ROOT = Path(__file__).resolve().parents[1]
# This command's result at its default settings, committed to the repository (10 MB) so that a first
# `python train.py` spends its minutes on T-GRPO. RECORD in a cold start folder says what made it
# (`record`): {"recipe": this command's settings, "data": the built-in data's parameters
# (synthetic.make_dataset's manifest)}.
SHIPPED_COLDSTART = ROOT / "assets" / "coldstart"
RECORD = "coldstart.json"
# set by torchrun: a child process that inherited them would try to join the parent's process group
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR",
                "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                "TORCHELASTIC_USE_AGENT_STORE")


@dataclass
class Config:
    cache_dir: str = field(default="runs/cache", metadata={
        "help": "built-in data (data/) and tiny model (tiny/) are built here once"})
    out_dir: str = field(default="", metadata={
        "help": "where the stages go; empty: <cache_dir>/coldstart (final/ is the result)"})
    perception_epochs: float = field(default=2.0, metadata={
        "help": "stage 0: passes over the perception split (0: skip the stage); "
                "2 x 2880 samples = 720 steps of 8"})
    perception_lr: float = field(default=1e-3, metadata={
        "help": "stage 0: AdamW peak learning rate"})
    temporal_steps: int = field(default=300, metadata={
        "help": "stage 0b: steps of 8 on the perception split's order-dependent families alone "
                "(0: skip the stage)"})
    temporal_lr: float = field(default=5e-4, metadata={
        "help": "stage 0b: AdamW peak learning rate"})
    cot_epochs: float = field(default=5.0, metadata={
        "help": "stage 1: passes over the COT split and its perception mix"})
    cot_lr: float = field(default=5e-4, metadata={"help": "stage 1: AdamW peak learning rate"})
    cot_perception: int = field(default=320, metadata={
        "help": "stage 1: perception samples mixed into the COT split (0: the COT split alone)"})
    eval_samples: int = field(default=32, metadata={
        "help": "held-out prompts of sft.py's format/accuracy evaluation before and after each "
                "stage"})
    seed: int = field(default=42, metadata={"help": "seed of both sft.py runs"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda, passed to sft.py"})


def stage_commands(cfg: Config, data: Path, tiny: Path, out: Path) -> list[tuple[str, list[str]]]:
    """The (name, argv) of each stage's sft.py run, in order; stage 1 starts from stage 0's export
    (or from the tiny default when stage 0 is skipped). data: the built-in dataset folder; tiny: the
    tiny default folder."""
    common = ["--preset", "tiny", "--seed", str(cfg.seed), "--device", cfg.device,
              "--eval-data", str(data / "test.json"), "--eval-samples", str(cfg.eval_samples)]
    stages, start = [], tiny
    if cfg.perception_epochs > 0:
        stages.append(("perception", ["--model", str(start),
                                      "--data", str(data / "train_perception.json"),
                                      "--epochs", str(cfg.perception_epochs),
                                      "--lr", str(cfg.perception_lr)]))
        start = out / "perception" / "final"
    if cfg.temporal_steps > 0:
        stages.append(("temporal", ["--model", str(start),
                                    "--data", str(out / "perception_temporal.json"),
                                    "--media-root", str(data), "--steps", str(cfg.temporal_steps),
                                    "--lr", str(cfg.temporal_lr)]))
        start = out / "temporal" / "final"
    cot = (["--data", str(out / "cot_mix.json"), "--media-root", str(data)]
           if cfg.cot_perception > 0 else ["--data", str(data / "train_cot.json")])
    stages.append(("cot", ["--model", str(start), *cot, "--epochs", str(cfg.cot_epochs),
                           "--lr", str(cfg.cot_lr)]))
    return [(name, [sys.executable, str(ROOT / "sft.py"), *argv, *common,
                    "--out-dir", str(out / name)])
            for name, argv in stages]


def cot_mix(data: Path, out: Path, n_perception: int) -> Path:
    """Write out/cot_mix.json: the COT split followed by the first `n_perception` perception samples
    (their problem_id becomes "perception_<id>"); media paths stay relative to `data`. Returns the
    path. Raises ValueError when the perception split has fewer samples."""
    cot = json.loads((data / "train_cot.json").read_text())
    perception = json.loads((data / "train_perception.json").read_text())
    if len(perception) < n_perception:
        raise ValueError(f"coldstart: {data / 'train_perception.json'} has {len(perception)} "
                         f"samples, --cot-perception asks for {n_perception}")
    mixed = cot + [{**e, "problem_id": f"perception_{e['problem_id']}"}
                   for e in perception[:n_perception]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "cot_mix.json").write_text(json.dumps(mixed, indent=1) + "\n")
    return out / "cot_mix.json"


def perception_temporal(data: Path, out: Path) -> Path:
    """Write out/perception_temporal.json: the perception split's samples of the order-dependent
    families (data_source "synthetic/temporal/..."), in order; media paths stay relative to `data`.
    Returns the path. Raises ValueError when the split has none."""
    perception = json.loads((data / "train_perception.json").read_text())
    temporal = [e for e in perception if e["data_source"].startswith("synthetic/temporal/")]
    if not temporal:
        raise ValueError(f"coldstart: {data / 'train_perception.json'} has no synthetic/temporal/ "
                         "samples")
    out.mkdir(parents=True, exist_ok=True)
    (out / "perception_temporal.json").write_text(json.dumps(temporal, indent=1) + "\n")
    return out / "perception_temporal.json"


def build(cfg: Config) -> Path:
    """Run the stages that have no export yet and return out/final (the last stage's export,
    copied). Idempotent; an existing final/ whose RECORD differs from this cfg and data, and a stage
    export made by another command (its command.json), are rebuilt, saying why.
    Raises subprocess.CalledProcessError naming the stage's command when an sft.py run fails."""
    # the sft.py children run in ROOT
    out = Path(cfg.out_dir or coldstart_dir(cfg.cache_dir)).resolve()
    final = out / "final"
    paths = cache.paths(cfg.cache_dir, distributed.Dist())
    data, env = Path(paths["root"]).resolve(), child_env()
    if (final / "config.json").exists():
        why = record_mismatch(final, data, record(cfg, data)["recipe"])
        if why is None:
            return final
        print(f"coldstart: {final}: {why}: rebuilding", flush=True)
        shutil.rmtree(final)
    if cfg.temporal_steps > 0:
        perception_temporal(data, out)
    if cfg.cot_perception > 0:
        cot_mix(data, out, cfg.cot_perception)
    ran = False                                              # a stage ran: every later one runs too
    for name, cmd in stage_commands(cfg, data, Path(paths["tiny"]).resolve(), out):
        made = out / name / "command.json"                # the command that made the stage's export
        if (out / name / "final" / "config.json").exists():
            if not ran and made.exists() and json.loads(made.read_text()) == cmd[1:]:
                print(f"coldstart: stage {name}: done before ({out / name / 'final'})", flush=True)
                continue
            print(f"coldstart: stage {name}: made by another command, settings or earlier stage: "
                  "rebuilding", flush=True)
            shutil.rmtree(out / name)
        print(f"coldstart: stage {name}: {' '.join(cmd[1:])}", flush=True)
        shutil.rmtree(out / name, ignore_errors=True)     # a stage cut short starts afresh
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        made.write_text(json.dumps(cmd[1:]) + "\n")
        ran = True
        print(f"coldstart: stage {name} took {time.time() - t0:.0f} s", flush=True)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / name / "final", tmp)
    (tmp / RECORD).write_text(json.dumps(record(cfg, data), indent=1) + "\n")
    os.replace(tmp, final)                                       # atomic: final/ is whole or absent
    return final


def record(cfg: Config, data: Path) -> dict:
    """What made a cold start (RECORD in its folder): {"recipe": cfg's fields that change the result
    (all but the folders and the device), "data": the parameters in data/manifest.json
    (synthetic.make_dataset)}. Raises FileNotFoundError when `data` has no manifest.json."""
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "out_dir", "device")}
    return {"recipe": recipe, "data": json.loads((data / "manifest.json").read_text())["params"]}


# ---- finding the built-in cold start: what train.py, eval.py and blind_filter.py start from ----
def coldstart_dir(cache_dir: str | Path) -> Path:
    """Where the built-in cold start lives: cache_dir/coldstart (its stages in subfolders, the
    result in final/)."""
    return Path(cache_dir) / "coldstart"


def child_env() -> dict[str, str]:
    """This process's environment without the launcher's rank variables (LAUNCHER_ENV): for a
    single-process child."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}


def shipped_coldstart(data_dir: str | Path, shipped: str | Path = SHIPPED_COLDSTART) -> Path | None:
    """`shipped` (an HF folder with its RECORD) when its record's "data" parameters equal those of
    the built-in data in `data_dir` (its manifest.json, synthetic.make_dataset), else None, printing
    why when the folder exists but was built for other data (e.g. a newer scenes.VERSION: python
    builtin/coldstart.py then builds a matching one). Raises ValueError naming the file when RECORD
    is not JSON with a "data" entry."""
    shipped, manifest = Path(shipped), Path(data_dir) / "manifest.json"
    if not (shipped / RECORD).exists() or not manifest.exists():
        return None
    try:
        made_for = json.loads((shipped / RECORD).read_text())["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{shipped / RECORD}: not a cold start record with a \"data\" entry "
                         f"({e!r}); coldstart.py writes one") from e
    have = json.loads(manifest.read_text())["params"]
    if made_for != have:
        print(f"{shipped / RECORD} was built for the built-in data {made_for}; {manifest} has "
              f"{have}: not using it", flush=True)
        return None
    return shipped


def record_mismatch(folder: str | Path, data_dir: str | Path, recipe: dict | None) -> str | None:
    """Why the cold start in `folder` is not the built-in one for the data in `data_dir`: its RECORD
    is missing or unreadable, its "data" differs from data_dir's manifest parameters, or its
    "recipe" differs from `recipe` (None: not checked). Returns the reason (naming what differs), or
    None when it fits."""
    try:
        made = json.loads((Path(folder) / RECORD).read_text())
        made_for, made_by = made["data"], made["recipe"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        return f"no readable {RECORD} saying what made it ({type(e).__name__})"
    manifest = Path(data_dir) / "manifest.json"
    have = json.loads(manifest.read_text())["params"] if manifest.exists() else None
    if made_for != have:
        return f"built for the built-in data {made_for}, but {manifest} has {have}"
    if recipe is not None and made_by != recipe:
        diff = {k: (made_by.get(k), recipe.get(k)) for k in sorted(set(made_by) | set(recipe))
                if made_by.get(k) != recipe.get(k)}
        return ("built with other recipe settings than the default "
                f"({{setting: (its, default)}}: {diff})")
    return None


def existing_coldstart(cache_dir: str | Path,
                       shipped: str | Path = SHIPPED_COLDSTART) -> Path | None:
    """The built-in cold start that needs no build, the first of: cache_dir/coldstart/final (what
    `python coldstart.py` built there), when its RECORD says it was made for the built-in data in
    cache_dir/data by the default recipe (the shipped copy's; `record_mismatch`); the shipped one
    (`shipped_coldstart`). None when neither applies. Raises ValueError naming the folder and what
    differs when cache_dir's build does not fit (it is never used silently: pass it as --model to
    train from it anyway, or delete it to rebuild), and what shipped_coldstart raises."""
    final = coldstart_dir(cache_dir) / "final"
    if not (final / "config.json").exists():
        return shipped_coldstart(Path(cache_dir) / "data", shipped)
    shipped_record = Path(shipped) / RECORD
    default = json.loads(shipped_record.read_text())["recipe"] if shipped_record.exists() else None
    why = record_mismatch(final, Path(cache_dir) / "data", default)
    if why:
        raise ValueError(f"{final}: not the built-in cold start for this data: {why}. "
                         f"Train from it with --model {final}, or delete {final.parent} and "
                         "rerun to rebuild it")
    return final


def find_or_build(cache_dir: str | Path, proc: distributed.Dist,
                  shipped: str | Path = SHIPPED_COLDSTART) -> Path:
    """The built-in cold start (an HF folder): `existing_coldstart`, else built on rank 0 by `python
    builtin/coldstart.py` (a child process, minutes on CPU, with its progress bars) into
    cache_dir/coldstart/final while the other ranks wait (one barrier on every rank either way).
    Raises subprocess.CalledProcessError when the build fails."""
    found = existing_coldstart(cache_dir, shipped)
    final = coldstart_dir(cache_dir) / "final"
    if proc.main and found is None:
        print(f"building the built-in cold start in {final.parent} (once): python "
              "builtin/coldstart.py", flush=True)
        script = ROOT / "builtin" / "coldstart.py"
        subprocess.run([sys.executable, str(script), "--cache-dir", str(Path(cache_dir).resolve())],
                       cwd=ROOT, env=child_env(), check=True)
    distributed.barrier(proc)
    return found or final


def main(argv=None):
    cfg, _ = cfglib.parse(Config, argv, description=__doc__)
    t0 = time.time()
    final = build(cfg)
    print(f"coldstart: {final} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
