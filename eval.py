"""Benchmark evaluation in the Video-R1-eval format, plus a temporal-sensitivity report
(notes §7, §8).

    python eval.py                                     # what `python train.py` starts from (the
                                                       # built-in cold start), built-in test split
    python eval.py --model runs/tgrpo/final            # a run's export, at its recorded settings
                                                       # (flags given instead are named in the log)
    python eval.py --shuffled true                     # also on shuffled frames: ordered vs
                                                       # shuffled accuracy and the gap
    python eval.py --media ordered,shuffled,none,first-frame   # also blind (no media) and from the
                                                               # first frame only
    python eval.py --model runs/tgrpo/final --data Evaluation/eval_vsibench.json \\
        --data Evaluation/eval_mvbench.json
    torchrun --nproc_per_node 8 eval.py --model Video-R1-7B --data Evaluation/eval_mmvu.json \\
        --nframes 32 --out-dir runs/eval/video-r1-7b-32f   # items sharded over ranks, gathered
                                                           # on rank 0
    python eval.py --help                              # every knob, with its help

Per benchmark file `eval_{name}.json` (the Video-R1-eval schema, which is the RL schema:
data.load_samples):
1. Validation: every item's media file is opened (decord for videos, PIL for images). Missing and
   undecodable files are listed with counts and the items excluded, never scored, never replaced.
2. Generation: `--batch-size` prompts per rollout.generate call, one completion each, prompt = the
   eval template of notes §5 as one user turn (default system prompt; `--template train`: the
   T-GRPO/SFT template instead, for a policy that has only ever seen that one, like the tiny
   model). Decoding is near-greedy with every knob explicit (notes §9 item 17): temperature 0.01
   and top_p 0.001 as the paper reports (the official eval_bench.py uses temperature 0.1,
   notes §9 item 15), top_k off, repetition penalty 1.0, 1024 tokens.
3. Scoring (report.py): rewards.eval_score (answer extraction with fallback to the raw output,
   notes §7): exact match for multiple choice, the numerical rule, MRA for regression. Score = mean
   accuracy x 100, except VSI-Bench = (mean accuracy over non-regression items + mean MRA over
   regression items) / 2 x 100.
4. Output in --out-dir (default runs/eval/<model-name>): eval_{name}.json (per-item records +
   summary with the frames/pixels/sampling settings) and results.md, a table in the layout of the
   paper's Table 1. With --shuffled the same items also run on shuffled frames
   (eval_{name}_shuffled.json; one permutation per item, seeded by --seed and the item's index;
   images stay as they are); the report shows ordered vs shuffled accuracy and the gap, also per
   data_source category ("synthetic/temporal/..." vs "synthetic/static/...").
Records are appended to eval_{name}[_shuffled].records.jsonl after every batch; a rerun generates
only the items missing there and rebuilds the JSON from it (its first line holds the settings,
which must match).

Frames and pixels (notes §4 "Frames and pixels", §8): eval defaults max_frames 16 at fps 2.0 (or a
fixed --nframes 16/32/64), video pixels 128*28*28 .. 256*28*28 per frame, images 3136 .. 200704,
mRoPE time from the clip's sample fps (the official eval passes it). These are flags here, not
module constants to edit by hand (notes §9 item 12).
Departures from the official eval (docs/departures.md; the ID stands at the line):
  E1  an item whose media cannot be read is excluded and listed; any other error stops the run
  E2  temperature 0.01 as the paper reports (the official script: 0.1; both near-greedy with
      top-p 0.001)
  E3  generation is our decode step (rollout.generate, decode.py), not vLLM
  E4  frames and pixels are flags with eval defaults, not module constants edited by hand
  E5  the mRoPE time of the clip's sample fps is applied (whether vLLM 0.7.2 used it is unverified)
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
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
import pixels
import preflight
import records
import rollout
import tracking
from config import opt
from report import model_label, report, score_item, settings_line, summarize


@dataclass
class Config(common.Runtime):
    # --- what to evaluate ---
    model: str = opt("", "HF folder of the policy; empty: the built-in cold start "
                     "(train.py's start)")
    data: str = opt("", "benchmark JSON eval_{name}.json; repeat --data (or comma-separate) for "
                    "several; empty: the built-in test split")
    name: str = opt("", "benchmark name (with one --data); empty: from the file name "
                    "eval_{name}.json")
    media_root: str = opt("", "folder the JSON's ./paths are relative to; empty: the JSON's folder")
    out_dir: str = opt("", "where results go; empty: runs/eval/<model-name>")
    limit: int = opt(0, "> 0: only the first N items of each benchmark (smoke runs)")
    shuffled: bool = opt(False, "also evaluate on shuffled frames (= adding 'shuffled' to --media)")
    media: str = opt("ordered", "comma-separated media variants (blind.py): ordered | shuffled | "
                     "none (the question alone) | first-frame (a video cut to its first frame)")
    seed: int = opt(0, "seed of the frame shuffles (per item) and of sampling (per rank)")
    template: str = opt("eval", "eval: the official eval prompt (notes §5); train: the T-GRPO/SFT "
                        "prompt the policy was trained with", choices=("eval", "train"))
    # --- frames and pixels (notes §4, §8; eval values) ---
    nframes: int = opt(0, "> 0: a fixed frame count per video (16/32/64) instead of the fps rule")
    max_frames: int = opt(pixels.FPS_MAX_FRAMES, "most frames per video under the fps rule "
                          "(official FPS_MAX_FRAMES: 16, 32 or 64)")
    min_frames: int = opt(pixels.FPS_MIN_FRAMES, "fewest frames per video under the fps rule")
    fps: float = opt(pixels.FPS, "frames per second sampled by the fps rule")
    video_min_pixels: int = opt(pixels.VIDEO_MIN_PIXELS, "per-frame pixel floor")
    video_max_pixels: int = opt(pixels.EVAL_VIDEO_MAX_PIXELS, "per-frame pixel budget (eval "
                                "256·28·28)")
    video_total_pixels: int = opt(pixels.VIDEO_TOTAL_PIXELS, "pixel budget of a whole clip "
                                  "(qwen_vl_utils VIDEO_TOTAL_PIXELS)")
    image_min_pixels: int = opt(pixels.IMAGE_MIN_PIXELS, "image pixel floor")
    image_max_pixels: int = opt(pixels.IMAGE_MAX_PIXELS, "image pixel budget")
    rope_time: str = opt("sample", "mRoPE time: the clip's sample fps (official eval), or official "
                         "(2 fps, as training)", choices=("sample", "official"))
    # --- decoding (notes §7 "Engine") ---
    temperature: float = opt(0.01, "sampling temperature (paper 0.01; official script 0.1)")
    top_p: float = opt(0.001, "nucleus mass (0.001: greedy in practice)")
    top_k: int = opt(0, "top-k; 0 = off")
    repetition_penalty: float = opt(1.0, "1.0 = off")
    max_new_tokens: int = opt(1024, "max new tokens per answer")
    batch_size: int = opt(8, "prompts per generate call per rank (official: 64 on vLLM)")


def merge_data_flags(argv: list[str]) -> list[str]:
    """Turn repeated `--data X` flags into one comma-separated `--data X,Y` (config.parse keeps the
    last)."""
    out, paths, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--data" and i + 1 < len(argv):
            paths.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--data="):
            paths.append(argv[i][len("--data="):])
            i += 1
        else:
            out.append(argv[i])
            i += 1
    return out + (["--data", ",".join(paths)] if paths else [])


def finish_config(cfg: Config, explicit: set[str]) -> Config:
    """Apply the tiny preset to fields not given, and check values. Raises config.UserError naming
    the field."""
    common.apply_preset(cfg, explicit, common.EVAL_TINY, "eval.py")
    n_data = len([p for p in cfg.data.split(",") if p])
    cfglib.check(cfg, {"batch_size": (cfg.batch_size >= 1, ">= 1"),
                       "max_new_tokens": (cfg.max_new_tokens >= 1, ">= 1"),
                       "temperature": (cfg.temperature > 0, "> 0"),
                       "top_p": (0 < cfg.top_p <= 1, "in (0, 1]"),
                       "nframes": (cfg.nframes >= 0, ">= 0"),
                       "name": (not cfg.name or n_data <= 1, "with a single --data")})
    tracking.parse_backends(cfg.report_to)
    blind.parse(cfg.media)
    return cfg


def variants(cfg: Config) -> list[str]:
    """The media variants to run, in order: --media, plus 'shuffled' with --shuffled true."""
    return blind.parse(cfg.media + (",shuffled" if cfg.shuffled else ""))


def file_stem(name: str, variant: str) -> str:
    """The files' stem of a benchmark under a media variant: eval_{name}, eval_{name}_shuffled,
    ..._none, ..."""
    return f"eval_{name}" + ("" if variant == "ordered" else f"_{variant}")


def benchmark_name(json_path: str) -> str:
    """'eval_vsibench.json' -> 'vsibench'; any other file name -> its stem."""
    stem = Path(json_path).stem
    return stem[len("eval_"):] if stem.startswith("eval_") else stem


# ---- resumable records ---------------------------------------------------------------------------
def open_records(path: Path, header: dict) -> dict[int, dict]:
    """Load the scored records of an earlier run (index -> record) and check its settings header;
    create the file with `header` when it does not exist. A last line cut short by a kill is dropped
    from the file. Raises ValueError when the file was made with other settings."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"header": header}) + "\n")
        return {}
    raw = path.read_bytes()
    # partial last line: cut it off so appends stay line-aligned
    if raw and not raw.endswith(b"\n"):
        raw = raw[:raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    lines = raw.decode("utf-8").splitlines()
    old = json.loads(lines[0])["header"] if lines else None
    if old != header:
        diff = [k for k in header if old is None or old.get(k) != header[k]]
        raise ValueError(f"{path}: made with other settings ({', '.join(diff) or 'header'} "
                         f"differ); use another --out-dir or delete the file")
    done = {}
    for line in lines[1:]:
        r = json.loads(line)
        done[r["index"]] = r
    return done


# ---- generation ----------------------------------------------------------------------------------
def run_batch(indices, samples, variant, hf, tokenizer, media, sp, gen, cfg,
              decoder=None) -> tuple[list, list, list]:
    """Prepare (under media `variant`, blind.py), generate (one completion per prompt, one
    rollout.generate call) and score a batch of items. decoder: the run's decode.Decoder (default:
    a new eager one). Returns (records, [(index, reason)] of items whose media failed to decode:
    excluded, not scored, rollout records (records.py))."""
    prepared, failed, shuffled = [], [], variant == "shuffled"
    for i in indices:
        # the shuffle of item i depends only on (seed, i): the same on any rank, batch or resume
        try:
            frame_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
            prepared.append((i, blind.prepare(samples[i], tokenizer, media, variant, cfg.template,
                                              frame_gen)))
        except pixels.MediaError as e:   # E1: only unreadable media exclude an item; other errors
                                         # stop the run
            failed.append((i, f"undecodable: {e}"))
    if not prepared:
        return [], failed, []
    # images are never shuffled
    use_shuffled = [shuffled and p.shuffled_visual is not None for _, p in prepared]
    prompts = [p.shuffled_ids if s else p.prompt_ids for (_, p), s in zip(prepared, use_shuffled)]
    visuals = [p.shuffled_visual if s else p.visual for (_, p), s in zip(prepared, use_shuffled)]
    pad_id = tokenizer.pad_token_id
    outs = rollout.generate(hf, prompts, visuals, [1] * len(prompts), sp, pad_id,
                            common.stop_ids(tokenizer), gen, decoder)
    scored, rolled = [], []
    for (i, p), c, v, s in zip(prepared, outs, visuals, use_shuffled):
        text = tokenizer.decode(c.ids[0].tolist(), skip_special_tokens=True)
        grid = None if v is None else [int(x) for x in v.grid_thw]   # None: --media none
        scored.append(score_item(samples[i], i, text) | {"completion_tokens": int(c.lengths[0]),
                                                         "grid_thw": grid})
        rolled.append(records.scored_record(samples[i], records.media_of(p), [text],
                                            [int(c.lengths[0])], [scored[-1]["reward"]], 0, 0,
                                            f"eval/{variant}")
                      | {"permutation": p.perm.tolist() if s else None, "index": i})
    return scored, failed, rolled


def evaluate(name, json_path, samples, problems, variant, out_dir, header, hf, tokenizer, media, sp,
             cfg, proc, decoder=None, rolled: list | None = None) -> dict | None:
    """One benchmark, one variant (ordered or shuffled frames): resume from the records file,
    generate what is missing (sharded over ranks, gathered on rank 0 after every batch), write
    eval_{name}[_shuffled].json. `problems` maps item index -> reason for items excluded by
    validation; variant: blind.VARIANTS (ordered, shuffled, none, first-frame); rolled: on rank 0, a
    list to append the rollout records of the items generated now to (records.py). Returns the
    result dict on rank 0."""
    stem = file_stem(name, variant)
    records_path = out_dir / f"{stem}.records.jsonl"
    done, error = {}, None
    if proc.main:
        try:
            done = open_records(records_path, header)
        except ValueError as e:
            # raised on every rank, not only rank 0 (the others would wait forever)
            error = str(e)
    done_idx, error = distributed.broadcast_object((sorted(done), error), proc)
    if error:
        raise ValueError(error)
    done_idx = set(done_idx)
    todo = [i for i in range(len(samples)) if i not in done_idx and i not in problems]
    if proc.main:
        print(f"{stem}: {len(done_idx)} items already done, {len(todo)} to generate")
    shard = todo[proc.rank::proc.world]
    n_batches = math.ceil(math.ceil(len(todo) / proc.world) / cfg.batch_size) if todo else 0
    gen = torch.Generator(device=proc.device).manual_seed(cfg.seed + proc.rank)
    failed_all = []
    f = open(records_path, "a", encoding="utf-8") if proc.main else None
    for b in tqdm(range(n_batches), desc=stem, disable=not proc.main):
        recs, failed, rolls = run_batch(shard[b * cfg.batch_size:(b + 1) * cfg.batch_size], samples,
                                        variant, hf, tokenizer, media, sp, gen, cfg, decoder)
        # every rank takes part in every batch
        parts = distributed.all_gather_object((recs, failed, rolls), proc)
        if proc.main:
            for rank, (recs_r, failed_r, rolls_r) in enumerate(parts):
                if rolled is not None:
                    rolled += [r | {"rank": rank} for r in rolls_r]
                for r in recs_r:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                    done[r["index"]] = r
                failed_all += failed_r
            f.flush()
    if not proc.main:
        return None
    f.close()
    excluded = sorted([(i, problems[i]) for i in problems] + failed_all)
    for i, reason in failed_all:
        print(f"[excluded] {stem} item {i} (problem_id {samples[i].problem_id}): {reason}",
              file=sys.stderr)
    # --limit, media gone since
    records = [done[i] for i in sorted(done) if i < len(samples) and i not in problems]
    result = {"benchmark": name, "variant": variant, "data": str(json_path),
              "model": header["model"],
              "settings": {"media": header["media"], "sampling": header["sampling"],
                           "seed": cfg.seed, "batch_size": cfg.batch_size,
                           "world_size": proc.world},
              "summary": summarize(name, records) | {"n_items": len(samples),
                                                     "n_excluded": len(excluded)},
              "excluded": [{"index": i, "problem_id": samples[i].problem_id,
                            "path": samples[i].path, "reason": r}
                           for i, r in excluded],
              "records": records}
    result["final_acc"] = [{"mean_acc": result["summary"]["mean_acc"],
                            "mean_mra": result["summary"]["mean_mra"]}]
    tmp = out_dir / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    os.replace(tmp, out_dir / f"{stem}.json")
    s = result["summary"]
    print(f"{stem}: score {s['score']:.1f} (mean_acc {s['mean_acc']:.4f}, "
          f"mean_mra {s['mean_mra']:.4f}; {s['n_scored']} scored, {s['n_excluded']} excluded) | "
          f"{settings_line(result['settings'])}")
    return result


# ---- entry point ---------------------------------------------------------------------------------
def resolve(cfg: Config, proc: distributed.Dist) -> tuple[str, list[tuple[str, str]]]:
    """The policy folder and [(benchmark name, JSON path)]; the built-in cold start
    (what train.py starts from) and the built-in data (test split, benchmark 'synthetic') when
    --model or --data is empty (builtin.resolve)."""
    model, test_json, _ = builtin.resolve(cfg, proc, split="test")
    if not cfg.data:
        return model, [(cfg.name or "synthetic", test_json)]
    return model, [(cfg.name or benchmark_name(p), p) for p in cfg.data.split(",") if p]


def model_name(model: str) -> str:
    """Folder name of a model; 'final', 'step_*' and 'checkpoint-*' get their parent's name in
    front."""
    return model_label(str(Path(model).resolve()))


def main(argv=None) -> list[dict] | None:
    """Run the evaluation; returns the result dicts (rank 0) or None (other ranks)."""
    argv = merge_data_flags(list(sys.argv[1:] if argv is None else argv))
    cfg, explicit = cfglib.parse(Config, argv, description=__doc__)
    cfg = finish_config(cfg, explicit)
    proc = distributed.init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout_min)
    # inference: bf16 weights
    precision, dtype, _ = distributed.resolve_precision(cfg.precision, proc, cuda_default="bf16")
    amp = distributed.autocast(proc, precision)
    model_dir, benches = resolve(cfg, proc)
    preflight.check_benchmarks(benches, cfg.media_root, cfg.limit)          # before the model loads
    from model import load_policy
    hf, tokenizer = load_policy(model_dir, dtype, proc.device)
    hf.eval()
    media = common.media_config(cfg, hf.config)
    sp = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty,
                                cfg.max_new_tokens)
    out_dir = Path(cfg.out_dir or Path("runs/eval") / model_name(model_dir))
    decoder = decode.Decoder(cfg.compile_decode)   # greedy-like decoding, same step (L15)
    if proc.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"policy {model_dir} | {len(benches)} benchmark(s) | {proc.world} rank(s) on "
              f"{proc.device} | out {out_dir}")
        print(f"decoding: temperature {sp.temperature} (paper; official script 0.1), "
              f"top_p {sp.top_p}, top_k {sp.top_k} (off), "
              f"repetition_penalty {sp.repetition_penalty}, max_new_tokens {sp.max_new_tokens}")
        print(f"frames/pixels: {asdict(media)}")
    # rolled: this run's rollout records (records.py)
    results, rolled = [], ([] if proc.main else None)
    for name, json_path in benches:
        samples = data.load_samples(json_path, cfg.media_root or None)
        if cfg.limit > 0:
            samples = samples[:cfg.limit]
        # validation pass: every item's media, sharded over ranks
        mine = [(i, preflight.media_opens(samples[i]))
                for i in range(proc.rank, len(samples), proc.world)]
        problems = {i: r for part in distributed.all_gather_object(mine, proc)
                    for i, r in part if r}
        if proc.main:
            n_missing = sum(r.startswith("missing") for r in problems.values())
            print(f"validation {name}: {len(samples) - len(problems)} ok, {n_missing} missing, "
                  f"{len(problems) - n_missing} undecodable (of {len(samples)})")
            for i, r in sorted(problems.items()):
                print(f"[excluded] {name} item {i} (problem_id {samples[i].problem_id}): {r}",
                      file=sys.stderr)
        for variant in variants(cfg):
            shuffled = variant == "shuffled"
            header = {"model": str(Path(model_dir).resolve()),
                      "data": str(Path(json_path).resolve()),
                      "shuffled": shuffled, "seed": cfg.seed if shuffled else None,
                      "template": cfg.template,
                      "media": json.loads(json.dumps(asdict(media))),   # as read back
                      "sampling": asdict(sp)}
            if variant in ("none", "first-frame"):
                header["media_variant"] = variant
            with amp():
                result = evaluate(name, json_path, samples, problems, variant, out_dir, header, hf,
                                  tokenizer, media, sp, cfg, proc, decoder, rolled)
            if result is not None:
                results.append(result)
    if proc.main:
        names = {file_stem(r["benchmark"], r["variant"]) for r in results}
        # earlier runs into the same folder join the table
        for path in sorted(out_dir.glob("eval_*.json")):
            if path.stem not in names:
                results.append(json.loads(path.read_text()))
        table = report(results)
        (out_dir / "results.md").write_text(table)
        if rolled:   # the items generated by this run, every variant
            page = records.write(out_dir / "rollouts", "eval", rolled, f"eval.py: {model_dir}")[1]
            print(f"rollout page: {page}")
        print("\n" + table + f"\nwritten to {out_dir}\n{decoder.summary()}")
        tracker = tracking.Tracker(cfg, out_dir, asdict(cfg) | {"model": model_dir}, proc.main)
        tracker.log_rollouts(0, rolled)
        tracker.log({"step": 0, **{f"{file_stem(r['benchmark'], r['variant'])}/{k}":
                                   r["summary"][k] for r in results
                                   for k in ("score", "mean_acc", "mean_mra", "n_scored")}})
        tracker.close()
    distributed.cleanup(proc)
    return results if proc.main else None


if __name__ == "__main__":
    cfglib.run_main(main)
