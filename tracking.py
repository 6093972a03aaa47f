"""Experiment tracking with the standard libraries:
TensorBoard and Weights & Biases (`--report-to`).

    python train.py --report-to tensorboard            # runs/tgrpo/tensorboard/;
                                                       # view: tensorboard --logdir runs
    python train.py --report-to tensorboard,wandb      # both; wandb offline by default
                                                       # (no network needed):
    wandb sync runs/tgrpo/wandb/offline-run-*          # ...uploads the offline run later
    WANDB_MODE=online WANDB_PROJECT=p WANDB_NAME=n python train.py --report-to wandb   # wandb's own

`metrics.jsonl` stays the record of a run (always written, one JSON line per step); a tracker
receives the same rows, rank 0 only, under the same metric names grouped into namespaces a dashboard
shows as panels (NAMESPACES: `reward/accuracy`, `temporal/p_shuffled`, `policy/kl`,
`perf/step_time`, `eval/format`, ...), with the step as the x axis and the run's full config
recorded (TensorBoard: a `config` text entry; wandb: the run config). A run continued with
`--resume` writes into the same TensorBoard folder and the same wandb run id (out_dir/wandb/run_id).
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from config import UserError

BACKENDS = ("tensorboard", "wandb")
# metric name (as in metrics.jsonl) -> dashboard namespace; names not listed go to "policy/";
# "eval_x" -> "eval/x"
NAMESPACES = {
    "reward": ("reward", "reward_std", "accuracy", "format", "length_bonus", "zero_std_groups"),
    "temporal": ("temporal_bonus", "temporal_rate", "p", "p_shuffled", "bonus_adv_shift"),
    "perf": ("step_time", "skipped_media", "tokens", "epoch", "time_data", "time_prefill",
             "time_decode", "time_reference", "time_update"),
}
_SPACE = {name: space for space, names in NAMESPACES.items() for name in names}


def parse_backends(report_to: str) -> list[str]:
    """`--report-to` text to the backends it names ("none" or "" -> []). Raises ValueError for an
    unknown name."""
    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise UserError(f"--report-to: unknown backend {bad[0]!r}; expected none or any of "
                        f"{BACKENDS}")
    return names


def now(device) -> float:
    """Seconds (time.perf_counter) once the device's queued work is done
    (CUDA runs asynchronously)."""
    if getattr(device, "type", device) == "cuda":
        import torch
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepClock:
    """Where one training step's time goes: laps of the wall clock (device work included, `now`),
    logged as perf/time_data, time_prefill, time_decode, time_reference, time_update (seconds). The
    parts sum to the time from the clock's start to its last lap; train.py starts it with the step,
    so they sum to step_time but for the metrics all-reduce after the last lap."""

    def __init__(self, device):
        self.device, self.seconds = device, {}
        self.last = now(device)

    def lap(self, part: str, inside: tuple[str, float] | None = None) -> None:
        """Charge the time since the last lap to `part`; `inside` (name, seconds): a share of it
        measured inside (e.g. the prefill within the rollout) charged to `name` instead."""
        t = now(self.device)
        spent, self.last = t - self.last, t
        if inside is not None:
            self.seconds[inside[0]] = self.seconds.get(inside[0], 0.0) + inside[1]
            spent -= inside[1]
        self.seconds[part] = self.seconds.get(part, 0.0) + spent

    def row(self) -> dict:
        """{"time_<part>": seconds} of every part charged so far."""
        return {f"time_{k}": v for k, v in self.seconds.items()}


def namespaced(row: dict) -> dict:
    """One metrics row (name -> number) as dashboard keys: "accuracy" -> "reward/accuracy",
    "eval_format" -> "eval/format", "kl" -> "policy/kl" (NAMESPACES). "step" is dropped (it is the
    x axis); non-numbers too."""
    out = {}
    for k, v in row.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        key = f"eval/{k[5:]}" if k.startswith("eval_") else f"{_SPACE.get(k, 'policy')}/{k}"
        out[key] = v
    return out


class Tracker:
    """The run's trackers (rank 0 only: on other ranks, and with --report-to none, every
    call does nothing).

    cfg: an entry point's config (its report_to); out_dir: the run folder (TensorBoard writes to
    out_dir/tensorboard, wandb to out_dir/wandb); config: the full run config to record
    (JSON-serialisable); start_step: the step a resumed run continues from (0: a new run).
    TensorBoard then purges the points a crashed run logged after that step (SummaryWriter's
    purge_step), so each step keeps one point, as in metrics.jsonl. wandb cannot purge an offline
    run (its rewind, `resume_from`, is online-only), so a resumed run does not send the steps the
    crashed run already sent (out_dir/wandb/last_step); those points keep the crashed run's values,
    the same numbers when the resume is exact (checkpoint.py), and each step has one point.
    Raises ValueError for an unknown backend; ImportError naming the package when a
    backend is not installed.
    """

    def __init__(self, cfg, out_dir: str | Path, config: dict, main: bool = True,
                 start_step: int = 0):
        self.backends = parse_backends(cfg.report_to) if main else []
        out_dir = Path(out_dir)
        self.tb = self.wandb = None
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter     # needs the `tensorboard` package
            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
            if not start_step:
                self.tb.add_text("config",
                                 "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        if "wandb" in self.backends:
            import wandb
            # a resumed run (--resume) continues the same wandb run
            id_file = out_dir / "wandb" / "run_id"
            id_file.parent.mkdir(parents=True, exist_ok=True)
            if not id_file.exists():
                id_file.write_text(secrets.token_hex(4))                # wandb run ids: [a-z0-9]
            # wandb's own variables, with this project's defaults: offline (no network; `wandb
            # sync` the folder later) and the run named after its folder
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "video-r1"),
                                    name=os.environ.get("WANDB_NAME", out_dir.resolve().name),
                                    mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out_dir),
                                    id=id_file.read_text().strip(), resume="allow",
                                    config=json.loads(json.dumps(config, default=str)),
                                    reinit="finish_previous")
            self.last_file = id_file.with_name("last_step")   # the highest step wandb was sent
            self.sent = (int(self.last_file.read_text()) if start_step and self.last_file.exists()
                         else 0)   # fixed

    def log(self, row: dict) -> None:
        """Send one metrics row (with its "step") to every backend, under `namespaced` names."""
        if not self.backends:
            return
        step, values = int(row["step"]), namespaced(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        # a resumed run skips what the crashed run sent
        if self.wandb is not None and step > self.sent:
            self.wandb.log(values, step=step)
            self.last_file.write_text(str(step))

    def log_rollouts(self, step: int, recs: list[dict]) -> None:
        """Rollout records (records.py) at `step`: TensorBoard gets one text entry `rollouts/<kind>`
        (a markdown table, one row per completion), wandb a Table under the same key."""
        if not self.backends or not recs:
            return
        import records
        rows, tag = records.table_rows(recs), f"rollouts/{recs[0]['kind']}"
        if self.tb is not None:
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
            md = ["| " + " | ".join(records.TABLE_COLUMNS) + " |",
                  "|" + "---|" * len(records.TABLE_COLUMNS)]
            self.tb.add_text(
                tag, "\n".join(md + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]), step)
            self.tb.flush()
        if self.wandb is not None and step > self.sent:
            import wandb
            self.wandb.log({tag: wandb.Table(columns=records.TABLE_COLUMNS, data=rows)}, step=step)

    def close(self) -> None:
        """Flush and close every backend (prints the `wandb sync` command for an offline run)."""
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            offline = self.wandb.settings.mode == "offline"
            folder = self.wandb.dir
            self.wandb.finish()
            if offline:
                print(f"wandb: offline run in {Path(folder).parent}; "
                      f"upload it with `wandb sync {Path(folder).parent}`")
        self.backends, self.tb, self.wandb = [], None, None
