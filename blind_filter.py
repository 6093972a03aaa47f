"""Drop the training samples a policy answers without their media: K blind answers per
question, each sample's blind accuracy, and the JSON of the samples it cannot answer blind, ready
for `train.py --data`.

    python blind_filter.py                       # the built-in cold start, built-in train split
    python blind_filter.py --model runs/sft/final --data Video-R1-260k.json \
        --media-root Video-R1-data --K 8 --keep-below 0.5 --out-dir runs/blind/260k
                                                 # then: train.py --data runs/blind/260k/kept.json
    torchrun --nproc_per_node 8 blind_filter.py ...   # samples sharded over ranks, rank 0 writes
    python blind_filter.py --help                # every knob, with its help

Why (VidGround, "Watch Before You Answer"): 30.9 % of Video-R1-260k can be answered from the text
alone, and plain GRPO on the rest beat Video-R1. A question the policy answers without the video
teaches it nothing about the video, and T-GRPO's bonus cannot tell it from a question that needs
the frames' order.

Each question is asked with its media removed (blind.py "none": the same chat template and T-GRPO
prompt, no media item, no vision tokens), K completions sampled like the rollout (temperature 1.0,
top-p 0.95, top-k 50), each scored by rewards.accuracy_reward; blind accuracy = their mean.
Written in --out-dir:
  blind.records.jsonl  a settings header, then one line per sample (index, problem_id, path,
                       data_source, blind_accuracy, the K answers), appended after every batch:
                       a rerun after a kill continues where it stopped (the header must match)
  kept.json            the entries whose blind accuracy < --keep-below, as in the input JSON but
                       for "path", made absolute (train.py --data kept.json from any folder)
  removed.json         the entries answered blind (blind accuracy >= --keep-below), the same way
  unreadable.json      samples whose media cannot be opened (checked, not decoded), with the
                       reason: left out of kept.json (train.py would skip them, L2), never silently
  summary.json         counts and the blind accuracy per data_source
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import blind
import builtin
import common
import config as cfglib
import data
import decode
import distributed
import preflight
import rewards
import rollout


@dataclass
class Config:
    model: str = field(
        default="",
        metadata={"help": "HF folder of the policy; empty: the built-in cold start (as train.py)"},
    )
    data: str = field(
        default="",
        metadata={"help": "training JSON/JSONL (Video-R1 schema); empty: the built-in train split"},
    )
    media_root: str = field(
        default="",
        metadata={"help": "folder the JSON's ./paths are relative to; empty: the JSON's folder"},
    )
    out_dir: str = field(
        default="", metadata={"help": "where the files go; empty: runs/blind/<data file stem>"}
    )
    cache_dir: str = field(
        default="runs/cache", metadata={"help": "built-in data and cold start are built here once"}
    )
    K: int = field(default=8, metadata={"help": "blind completions per question"})
    keep_below: float = field(
        default=0.5,
        metadata={"help": "kept.json holds the samples whose blind accuracy is below this"},
    )
    limit: int = field(default=0, metadata={"help": "> 0: only the first N samples (smoke runs)"})
    check_media: bool = field(
        default=True,
        metadata={"help": "open every sample's media file and list the unreadable ones"},
    )
    template: str = field(
        default="train", metadata={"help": "prompt template: 'train' (the T-GRPO prompt) | 'eval'"}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (the rollout's)"}
    )
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass"})
    top_k: int = field(default=50, metadata={"help": "top-k; 0 = off"})
    max_new_tokens: int = field(default=768, metadata={"help": "max new tokens per answer"})
    batch_size: int = field(
        default=16, metadata={"help": "questions per generate call per rank (K completions each)"}
    )
    seed: int = field(default=0, metadata={"help": "sampling seed (per rank: seed + rank)"})
    compile_decode: str = field(
        default="auto", metadata={"help": "compile the decode step; auto: on CUDA"}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16-mixed | bf16"},
    )
    dist_backend: str = field(
        default="auto",
        metadata={
            "help": "process-group backend: auto (gloo on CPU; cpu:gloo,cuda:nccl on CUDA) or a "
            "torch backend string"
        },
    )
    preset: str = field(
        default="auto",
        metadata={"help": "auto: 'tiny' when --model is empty, else 'paper'; tiny | paper"},
    )


TINY = dict(max_new_tokens=64)


def finish_config(cfg: Config, explicit: set[str]) -> Config:
    """Apply the tiny preset to fields not given and check values. Raises ValueError naming the
    field."""
    common.apply_preset(cfg, explicit, TINY, "blind_filter.py")
    checks = {
        "K": cfg.K >= 1,
        "keep_below": 0 <= cfg.keep_below <= 1,
        "batch_size": cfg.batch_size >= 1,
        "template": cfg.template in ("train", "eval"),
        "temperature": cfg.temperature > 0,
        "max_new_tokens": cfg.max_new_tokens >= 1,
        "precision": cfg.precision in distributed.PRECISIONS,
        "compile_decode": cfg.compile_decode in decode.COMPILE_MODES,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(
            f"blind_filter.py: invalid --{bad[0].replace('_', '-')}: {getattr(cfg, bad[0])!r}"
        )
    return cfg


def open_records(path: Path, header: dict) -> dict[int, dict]:
    """The records of an earlier run (index -> record), after checking its header; a new file with
    `header` when there is none. A last line cut short by a kill is dropped. Raises ValueError when
    the settings differ."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"header": header}) + "\n")
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # a partial last line: cut it so appends stay line-aligned
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    lines = raw.decode("utf-8").splitlines()
    old = json.loads(lines[0])["header"] if lines else None
    if old != header:
        diff = [k for k in header if old is None or old.get(k) != header[k]]
        raise ValueError(
            f"{path}: made with other settings ({', '.join(diff) or 'header'} differ); use another "
            f"--out-dir or delete the file"
        )
    return {r["index"]: r for r in map(json.loads, lines[1:])}


def score_batch(indices, samples, hf, tokenizer, sp, gen, cfg, decoder) -> list[dict]:
    """K blind completions for each sample of `indices` (one generate call), scored. Returns one
    record each."""
    prepared = [blind.prepare(samples[i], tokenizer, None, "none", cfg.template) for i in indices]
    outs = rollout.generate(
        hf,
        [p.prompt_ids for p in prepared],
        [None] * len(prepared),
        [cfg.K] * len(prepared),
        sp,
        tokenizer.pad_token_id,
        common.stop_ids(tokenizer),
        gen,
        decoder,
    )
    out = []
    for i, c in zip(indices, outs):
        s = samples[i]
        texts = tokenizer.batch_decode(c.ids, skip_special_tokens=True)
        accs = [rewards.accuracy_reward(t, s.solution, s.problem_type) for t in texts]
        out.append(
            {
                "index": i,
                "problem_id": s.problem_id,
                "path": s.path,
                "data_source": s.data_source,
                "problem_type": s.problem_type,
                "blind_accuracy": sum(accs) / len(accs),
                "accuracy": accs,
                "answers": texts,
            }
        )
    return out


def entries_with_absolute_paths(
    json_path: str, samples: list[data.Sample], indices: list[int]
) -> list[dict]:
    """The input file's entries at `indices`, unchanged but for "path", set to the sample's absolute
    media path."""
    raw = data._read_entries(json_path)
    return [raw[samples[i].entry] | {"path": samples[i].media_path} for i in indices]


def main(argv=None) -> dict | None:
    """Run the filter; returns the summary on rank 0, None elsewhere."""
    cfg, explicit = cfglib.parse(Config, argv, description=__doc__)
    cfg = finish_config(cfg, explicit)
    proc = distributed.init_distributed(cfg.device, cfg.dist_backend)
    precision, dtype, _ = distributed.resolve_precision(cfg.precision, proc, cuda_default="bf16")
    amp = distributed.autocast(proc, precision)
    model_dir, json_path, _ = builtin.resolve(cfg, proc)
    from model import load_policy

    hf, tokenizer = load_policy(model_dir, dtype, proc.device)
    hf.eval()
    samples = data.load_samples(json_path, cfg.media_root or None)
    samples = samples[: cfg.limit] if cfg.limit > 0 else samples
    out_dir = Path(cfg.out_dir or Path("runs/blind") / Path(json_path).stem)
    sp = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, 1.0, cfg.max_new_tokens)
    header = {
        "model": str(Path(model_dir).resolve()),
        "data": str(Path(json_path).resolve()),
        "K": cfg.K,
        "template": cfg.template,
        "sampling": asdict(sp),
        "seed": cfg.seed,
    }
    # media check, sharded: the unreadable are listed (and left out of kept.json), never dropped
    mine = [
        (i, preflight.media_opens(samples[i]) if cfg.check_media else None)
        for i in range(proc.rank, len(samples), proc.world)
    ]
    unreadable = {i: r for part in distributed.all_gather_object(mine, proc) for i, r in part if r}
    done, error = {}, None
    if proc.main:
        try:
            done = open_records(out_dir / "blind.records.jsonl", header)
        except ValueError as e:  # raised on every rank (the others would wait forever)
            error = str(e)
    done_idx, error = distributed.broadcast_object((sorted(done), error), proc)
    if error:
        raise ValueError(error)
    todo = [i for i in range(len(samples)) if i not in set(done_idx)]
    shard = todo[proc.rank :: proc.world]
    n_batches = math.ceil(math.ceil(len(todo) / proc.world) / cfg.batch_size) if todo else 0
    if proc.main:
        print(
            f"blind filter: policy {model_dir} | {json_path}: {len(samples)} samples, "
            f"{len(done_idx)} done, "
            f"{len(todo)} to ask, K={cfg.K} | {proc.world} rank(s) on {proc.device} | out {out_dir}"
        )
    gen = torch.Generator(device=proc.device).manual_seed(cfg.seed + proc.rank)
    decoder = decode.Decoder(cfg.compile_decode)
    f = open(out_dir / "blind.records.jsonl", "a", encoding="utf-8") if proc.main else None
    for b in tqdm(range(n_batches), desc="blind", disable=not proc.main):
        with amp():
            recs = score_batch(
                shard[b * cfg.batch_size : (b + 1) * cfg.batch_size],
                samples,
                hf,
                tokenizer,
                sp,
                gen,
                cfg,
                decoder,
            )
        for part in distributed.all_gather_object(
            recs, proc
        ):  # every rank joins every batch (equal n_batches)
            if proc.main:
                for r in part:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                    done[r["index"]] = r
        if proc.main:
            f.flush()
    summary = None
    if proc.main:
        f.close()
        summary = write_outputs(out_dir, json_path, samples, done, unreadable, cfg)
    distributed.cleanup(proc)
    return summary


def write_outputs(
    out_dir: Path, json_path: str, samples, done: dict, unreadable: dict, cfg
) -> dict:
    """kept.json, removed.json, unreadable.json and summary.json from the scored records (module
    docstring)."""
    readable = [i for i in range(len(samples)) if i not in unreadable]
    kept = [i for i in readable if done[i]["blind_accuracy"] < cfg.keep_below]
    removed = [i for i in readable if done[i]["blind_accuracy"] >= cfg.keep_below]
    for name, idx in (("kept", kept), ("removed", removed)):
        (out_dir / f"{name}.json").write_text(
            json.dumps(
                entries_with_absolute_paths(json_path, samples, idx), indent=1, ensure_ascii=False
            )
        )
    (out_dir / "unreadable.json").write_text(
        json.dumps(
            [
                {
                    "index": i,
                    "entry": samples[i].entry,
                    "problem_id": samples[i].problem_id,
                    "path": samples[i].path,
                    "reason": r,
                }
                for i, r in sorted(unreadable.items())
            ],
            indent=1,
        )
    )
    by_source: dict[str, list[float]] = {}
    for i in readable:
        by_source.setdefault(samples[i].data_source, []).append(done[i]["blind_accuracy"])
    summary = {
        "data": json_path,
        "samples": len(samples),
        "kept": len(kept),
        "removed": len(removed),
        "unreadable": len(unreadable),
        "keep_below": cfg.keep_below,
        "K": cfg.K,
        "blind_accuracy": sum(done[i]["blind_accuracy"] for i in readable) / max(1, len(readable)),
        "by_source": {
            k: {"n": len(v), "blind_accuracy": sum(v) / len(v)}
            for k, v in sorted(by_source.items())
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for i, r in sorted(unreadable.items()):
        print(
            f"[unreadable] entry {samples[i].entry} (problem_id {samples[i].problem_id}): {r}",
            file=sys.stderr,
        )
    print(
        f"blind accuracy {summary['blind_accuracy']:.3f}: kept {len(kept)}, removed {len(removed)} "
        f"(answered blind, >= {cfg.keep_below}), unreadable {len(unreadable)} of {len(samples)} | "
        f"train on it: python train.py "
        f"--data {out_dir / 'kept.json'}"
    )
    return summary


if __name__ == "__main__":
    main()
