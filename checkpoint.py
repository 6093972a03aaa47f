"""Training checkpoints that resume exactly, for DDP, FSDP2 and one process; and HF folders out.

`save_hf` writes an HF folder that plain transformers loads (atomically: old, new or none), and
`disk_message` names a full disk in the errors of both kinds of save.

Layout of OUT_DIR/checkpoints/step_000010/ (written by every rank, then renamed by rank 0):
    *.distcp, .metadata   model and optimizer state via torch.distributed.checkpoint (DCP): each
                          FSDP rank writes its own shards; DCP reshards on load, so a run may
                          resume on another world size (the per-rank RNG and data files then no
                          longer line up; resume on the same world size for an exact continuation)
    rank00000.pt ...      per rank: step, python/numpy/torch/cuda RNG states, the sampling and
                          frame generators, the prompt stream position (epoch, cursor)
Atomic: everything goes to step_000010.tmp first; only after every rank has finished does rank 0
rename it, so a crash mid-save leaves the previous checkpoint as the newest complete one. The last
`keep` are kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
# a BaseException, not an Exception
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import distributed
from config import UserError
from model import family

PATTERN = re.compile(r"^step_(\d{6,})$")


def save_hf(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> Path:
    """Save an HF folder that plain transformers loads: config, safetensors, tokenizer with chat
    template, the family's processor settings (`preprocessor_config.json`, Qwen3-VL's also
    `video_preprocessor_config.json`) and a `generation_config.json` (the official code forgets the
    processor files). Tensors that transformers dropped on load but the family keeps (Qwen3.5's MTP
    head, `qwen3_5.carried_tensors`) go back in unchanged.

    Atomic: everything is written to `folder`.tmp, which then replaces `folder` (an older `folder`
    is moved aside first and deleted after), so a kill or a full disk leaves either the complete old
    folder, the complete new one, or none -- never weights without a tokenizer. `state_dict`
    (optional) is a full, gathered state dict to write instead of `model.state_dict()` (used after
    FSDP). Only call on one rank. Raises OSError naming the folder when writing fails (e.g. "no
    space left on device"); the partial temporary folder is removed.
    """
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    # Qwen3.5's MTP (H2)
    carried = getattr(family(model.config), "carried_tensors", lambda m: {})(model)
    if carried:
        state_dict = {**(model.state_dict() if state_dict is None else state_dict), **carried}
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "chat_template.json").write_text(
            json.dumps({"chat_template": tokenizer.chat_template}, indent=2))
        for name, settings in family(model.config).processor_files(model.config).items():
            (tmp / name).write_text(json.dumps(settings, indent=2))
    except Exception as e:
        reason = disk_message(e, folder.parent)                        # before the partial files go
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{folder}: writing the HF folder failed: {reason}") from e
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def disk_message(error: BaseException, where: str | Path) -> str:
    """`error`'s text, prefixed by "no space left on device (N bytes free at WHERE)" when the error
    chain holds ENOSPC or fewer than 64 MiB are free there (torch.save reports a full disk as
    "unexpected pos ...")."""
    import errno
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    full = (any(getattr(x, "errno", None) == errno.ENOSPC for x in chain)
            or (free is not None and free < 64 * 2**20))
    text = f"{type(error).__name__}: {error}"
    return f"no space left on device ({free} bytes free at {where}); {text}" if full else text


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state that influences training on this rank: python, numpy, torch CPU, CUDA, and
    the named torch generators (train.py's sampling and frame-shuffling generators)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Restore what `rng_state` returned. Raises KeyError when a named generator is missing from
    `state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


@contextlib.contextmanager
def single_process_quiet():
    """A context without DCP's UserWarning "torch.distributed is disabled, unavailable or
    uninitialized, assuming the intent is to save/load in a single process" (the intent here, on
    every single-process save and load); any other warning still shows."""
    with warnings.catch_warnings():
        quiet = "torch.distributed is disabled, unavailable or uninitialized"
        warnings.filterwarnings("ignore", message=quiet, category=UserWarning)
        yield


def save(out_dir: str | Path, step: int, module, optimizer, proc: distributed.Dist, extra: dict,
         keep: int = 2) -> Path:
    """Save checkpoint `step` (the number of optimizer steps done) under out_dir/checkpoints;
    collective.

    module: the wrapped policy (DDP, FSDP2 or plain); its `.hf` is saved, under the same keys in
    every mode.
    extra: this rank's picklable state (RNG states, stream position). Returns the final folder.
    """
    root = Path(out_dir) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    if proc.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier(proc)
    model_sd, optim_sd = get_state_dict(distributed.unwrap(module), optimizer)
    try:
        with single_process_quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save({"step": step, **extra}, tmp / f"rank{proc.rank:05d}.pt")
    except (Exception, CheckpointException) as e:
        # a full disk: "unexpected pos 704 vs 598" from torch.save
        reason = disk_message(e, root)                                 # before the partial files go
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"checkpoint {tmp}: writing failed on rank {proc.rank}: {reason}; the "
                      f"previous checkpoint, if any, is intact") from e
    distributed.barrier(proc)
    if proc.main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in root.iterdir() if PATTERN.match(p.name))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(proc)
    return final


def latest(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under out_dir/checkpoints (temp folders ignored), or
    None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.iterdir() if PATTERN.match(p.name)) if root.is_dir() else []
    return done[-1] if done else None


class NotACheckpoint(UserError, FileNotFoundError):
    """--resume names a folder that is not a checkpoint: a user error, also a FileNotFoundError."""


def resolve(resume: str, out_dir: str | Path) -> Path | None:
    """--resume value -> folder: "" (no resume), "auto" (latest in out_dir, None when there is none)
    or a path. Raises FileNotFoundError (NotACheckpoint) when an explicit path is not a checkpoint
    folder."""
    if not resume:
        return None
    if resume == "auto":
        return latest(out_dir)
    path = Path(resume)
    if not (path / ".metadata").exists():
        raise NotACheckpoint(f"--resume {resume}: not a checkpoint folder (no .metadata)")
    return path


def new_run_id(proc: distributed.Dist) -> str:
    """A fresh run's identity (12 hex digits), the same on every rank (rank 0 draws it; a
    collective)."""
    return distributed.broadcast_object(uuid.uuid4().hex[:12] if proc.main else None, proc)


def run_of(path: Path) -> str | None:
    """The run identity ("run_id" of the run config) that checkpoint folder `path` was written by,
    or None (written before run identities, or without a run config)."""
    own = path / f"rank{0:05d}.pt"
    if not own.exists():
        return None
    return torch.load(own, weights_only=False).get("config", {}).get("run_id")


def check_same_run(path: Path, out_dir: str | Path, who: str) -> None:
    """--resume auto continues only the run whose config.json is in out_dir: refuse a newest
    checkpoint written by another run (its run_id differs). Raises UserError naming both."""
    config = Path(out_dir) / "config.json"
    try:
        current = json.loads(config.read_text()).get("run_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return                                          # no run config: nothing to tell apart
    owner = run_of(path)
    if current and owner and current != owner:
        raise UserError(f"{who}: --resume auto: the newest checkpoint {path} belongs to run "
                        f"{owner}, but {config} is run {current}'s; pass --resume {path} to "
                        f"continue that run deliberately, or --overwrite to start afresh")


def load(path: str | Path, module, optimizer, proc: distributed.Dist) -> dict:
    """Load model and optimizer state in place (collective) and return this rank's extra dict (with
    "step"). Raises FileNotFoundError when this rank's file is missing (a checkpoint from a smaller
    world size)."""
    path = Path(path)
    own = path / f"rank{proc.rank:05d}.pt"
    if not own.exists():
        raise FileNotFoundError(f"{own}: checkpoint has no state for rank {proc.rank} (saved with "
                                f"fewer ranks?)")
    model_sd, optim_sd = get_state_dict(distributed.unwrap(module), optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(distributed.unwrap(module), optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    return torch.load(own, weights_only=False)


def resume(resume_flag: str, out_dir: str | Path, module, optimizer, proc: distributed.Dist,
           run_config: dict, allow_change: bool, generators: dict[str, torch.Generator],
           who: str) -> tuple[int, int]:
    """What an entry point's --resume does: (step, stream position) to continue from, (0, 0) for a
    fresh run.

    Loads the model and optimizer state in place (collective), restores the RNG states of
    `generators`, and refuses a checkpoint written with other settings (`config_changes`) unless
    `allow_change`, and under "auto" one of another run (`check_same_run`). Sets
    run_config["run_id"]: the checkpoint's run, or a new one for a fresh run. Raises
    config.UserError (a ValueError) naming `who` and listing the differences; FileNotFoundError as
    `resolve` and `load`."""
    path = resolve(resume_flag, out_dir)
    if path is None:
        run_config["run_id"] = new_run_id(proc)          # a fresh run: a new identity
        return 0, 0
    if resume_flag == "auto":
        check_same_run(path, out_dir, who)
    extra = load(path, module, optimizer, proc)
    run_config["run_id"] = extra.get("config", {}).get("run_id") or new_run_id(proc)   # its own
    changes = config_changes(extra["config"], run_config) if "config" in extra else []
    if changes and not allow_change:
        raise UserError(f"{who}: {path} was written with other settings: {'; '.join(changes)}. "
                         f"Resume with the same settings, or pass --allow-config-change true")
    set_rng_state(extra["rng"], generators)
    if proc.main:
        print(f"resumed from {path} at step {extra['step']}"
              + (f" (changed: {'; '.join(changes)})" if changes else ""))
    return extra["step"], extra["position"]


# Settings that may differ between a checkpoint and the run resuming it: how long to run, how often
# to save, and machinery that does not change what is computed. Any other difference is refused
# unless the user allows it.
RESUME_MAY_CHANGE = {"steps", "save_every", "keep_checkpoints", "export_every", "resume",
                     "allow_config_change", "data_workers", "frame_cache", "plan", "nproc",
                     "logprob_chunk", "activation_checkpointing", "device", "dist_backend",
                     "out_dir", "cache_dir", "overwrite", "run_id"}


def config_changes(saved: dict, now: dict) -> list[str]:
    """The settings that differ between a checkpoint's run config and this run's, as "name: old ->
    new" (names in RESUME_MAY_CHANGE excepted; a setting present on one side only counts as a
    change)."""
    keys = sorted((set(saved) | set(now)) - RESUME_MAY_CHANGE)
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in keys
            if saved.get(k) != now.get(k)]


def open_metrics(path: str | Path, keep_through_step: int):
    """Open the metrics JSON-lines file for appending, with one row per step: rows of steps after
    `keep_through_step` (the resumed checkpoint's step; 0 for a fresh run, which starts an empty
    file) are dropped first, so the steps re-run after a crash are not logged twice. Rewritten
    atomically. Returns the open file. Raises ValueError naming the file and line for a row that is
    not JSON."""
    path = Path(path)
    kept = []
    if keep_through_step > 0 and path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if n == len(lines):
                    break                                   # a last line cut short by the crash
                raise ValueError(f"{path}: line {n}: not JSON: {e}") from e
            if row.get("step", 0) <= keep_through_step:
                kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")
