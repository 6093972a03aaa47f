"""Training checkpoints that resume exactly, for DDP, FSDP2 and one process (DESIGN.md "Checkpoints").

Layout of OUT_DIR/checkpoints/step_000010/ (written by every rank, then renamed by rank 0):
    *.distcp, .metadata   model and optimizer state via torch.distributed.checkpoint (DCP): each FSDP rank
                          writes its own shards; DCP reshards on load, so a run may resume on another world size
                          (the per-rank RNG and data files then no longer line up; resume on the same world size
                          for an exact continuation)
    rank00000.pt ...      per rank: step, python/numpy/torch/cuda RNG states, the sampling and frame generators,
                          the prompt stream position (epoch, cursor)
Atomic: everything goes to step_000010.tmp first; only after every rank has finished does rank 0 rename it,
so a crash mid-save leaves the previous checkpoint as the newest complete one. The last `keep` are kept.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import distributed as D

PATTERN = re.compile(r"^step_(\d{6,})$")


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state that influences training on this rank: python, numpy, torch CPU, CUDA, and the
    named torch generators (train.py's sampling and frame-shuffling generators)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Restore what `rng_state` returned. Raises KeyError when a named generator is missing from `state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save(out_dir: str | Path, step: int, module, optimizer, d: D.Dist, extra: dict, keep: int = 2) -> Path:
    """Save checkpoint `step` (the number of optimizer steps done) under out_dir/checkpoints; collective.

    module: the wrapped policy (DDP, FSDP2 or plain); its `.hf` is saved, under the same keys in every mode.
    extra: this rank's picklable state (RNG states, stream position). Returns the final folder.
    """
    root = Path(out_dir) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    D.barrier(d)
    model_sd, optim_sd = get_state_dict(D.unwrap(module), optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save({"step": step, **extra}, tmp / f"rank{d.rank:05d}.pt")
    D.barrier(d)
    if d.main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in root.iterdir() if PATTERN.match(p.name))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier(d)
    return final


def latest(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under out_dir/checkpoints (temp folders ignored), or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.iterdir() if PATTERN.match(p.name)) if root.is_dir() else []
    return done[-1] if done else None


def resolve(resume: str, out_dir: str | Path) -> Path | None:
    """--resume value -> folder: "" (no resume), "auto" (latest in out_dir, None when there is none) or a path.
    Raises FileNotFoundError when an explicit path is not a checkpoint folder."""
    if not resume:
        return None
    if resume == "auto":
        return latest(out_dir)
    path = Path(resume)
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no .metadata)")
    return path


def load(path: str | Path, module, optimizer, d: D.Dist) -> dict:
    """Load model and optimizer state in place (collective) and return this rank's extra dict (with "step").
    Raises FileNotFoundError when this rank's file is missing (a checkpoint from a smaller world size)."""
    path = Path(path)
    own = path / f"rank{d.rank:05d}.pt"
    if not own.exists():
        raise FileNotFoundError(f"{own}: checkpoint has no state for rank {d.rank} (saved with fewer ranks?)")
    model_sd, optim_sd = get_state_dict(D.unwrap(module), optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(D.unwrap(module), optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(own, weights_only=False)
