"""What an entry point checks and records around a run, before any model loads:

- a model folder's recorded settings (SETTINGS beside the weights): the preset, frames/pixels and
  sampling a run exported it with, so that `--preset auto` runs a checkpoint of the tiny world at
  the tiny world's settings;
- the --out-dir of a fresh run: never over an earlier run's metrics, checkpoints or exports;
- the data: the JSON's schema and that its media files exist, so that bad data stops in seconds, not
  after a 7B policy and its reference have loaded.
Every refusal is a config.UserError: one line `error: ...`, exit code 2 (config.run_main).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import data
import distributed
from config import UserError

SETTINGS = "run_settings.json"          # beside the weights of every export (final/, step_N/)
MEDIA_KEYS = ("fps", "min_frames", "max_frames", "nframes", "video_min_pixels", "video_max_pixels",
              "image_min_pixels", "image_max_pixels", "rope_time")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_completion_length")
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg",
             ".gif"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def on_main_rank() -> bool:
    """True in a single process and on torchrun's rank 0 (prints before a process group exists)."""
    return os.environ.get("RANK", "0") == "0"


# ---- a model folder's recorded settings ------------------------------------------------------
def settings_record(run_config: dict) -> dict:
    """The SETTINGS record of an export from an entry point's run config (asdict(cfg) | ...):
    {"preset", "run_id", "media": {MEDIA_KEYS it has}, "sampling": {SAMPLING_KEYS it has}}."""
    return {"preset": run_config.get("preset"), "run_id": run_config.get("run_id"),
            "media": {k: run_config[k] for k in MEDIA_KEYS if k in run_config},
            "sampling": {k: run_config[k] for k in SAMPLING_KEYS if k in run_config}}


def write_settings(folder: str | Path, run_config: dict) -> None:
    """Write SETTINGS (`settings_record`) into the exported HF folder `folder` (atomic)."""
    path = Path(folder) / SETTINGS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings_record(run_config), indent=1))
    os.replace(tmp, path)


def read_settings(model: str) -> dict | None:
    """The SETTINGS record of the HF folder `model`, or None when it has none. Raises UserError
    naming the file when it is not a JSON object with "preset" and "media"."""
    path = Path(model) / SETTINGS if model else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if "preset" not in record or "media" not in record:
            raise KeyError("preset" if "preset" not in record else "media")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a settings record with \"preset\" and \"media\" ({e!r}); "
                        f"delete it or pass --preset tiny|paper") from e
    return record


def take_settings(cfg, explicit: set[str], record: dict, groups: tuple[str, ...]) -> list[str]:
    """Copy the `groups` ("media", "sampling") of a SETTINGS record into the fields of `cfg` that it
    has and the user did not set. A flag given on the command line wins; each that differs from the
    record is returned as "--flag VALUE (the folder's: RECORDED)" for the log."""
    contradicted = []
    for group in groups:
        for k, v in record.get(group, {}).items():
            if not hasattr(cfg, k):
                continue
            if k not in explicit:
                setattr(cfg, k, v)
            elif getattr(cfg, k) != v:
                flag = "--" + k.replace("_", "-")
                contradicted.append(f"{flag} {getattr(cfg, k)!r} (the folder's: {v!r})")
    return contradicted


# ---- the output folder of a fresh run --------------------------------------------------------
def run_files(out_dir: str | Path) -> list[Path]:
    """What an earlier run left in out_dir (sorted): a non-empty metrics.jsonl (a run that stopped
    before its first row left nothing to lose), checkpoints/, final/, step_N/ exports."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.name in ("checkpoints", "final")
                  or (p.name == "metrics.jsonl" and p.stat().st_size > 0)
                  or (p.name.startswith("step_") and p.name[5:].isdigit()))


def claim_out_dir(out_dir: str | Path, resume: str, overwrite: bool, proc: distributed.Dist,
                  who: str) -> None:
    """Refuse a fresh run in an --out-dir holding another run's files (`run_files`), naming them,
    unless `resume` finds a checkpoint there to continue, or `overwrite`: then those files go first,
    listed in the log, with the run's config.json, curves.png and tracking folders (tb/, wandb/).
    Rank 0 decides; a collective. Raises UserError (`who`: the entry point) on every rank."""
    import checkpoint
    answer = None
    if proc.main:
        found = run_files(out_dir)
        try:
            continuing = bool(resume) and checkpoint.resolve(resume, out_dir) is not None
        except FileNotFoundError as e:
            answer, continuing = f"{who}: {e}", True
        if found and not continuing and overwrite:
            extra = [Path(out_dir) / n for n in ("config.json", "curves.png", "tb", "wandb")]
            gone = found + [p for p in extra if p.exists()]
            print(f"--overwrite: removing {', '.join(str(p) for p in gone)}", flush=True)
            for p in gone:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        elif found and not continuing:
            held = ", ".join(p.name for p in found)
            none = f" and --resume {resume} found no checkpoint in it" if resume else ""
            answer = (f"{who}: --out-dir {out_dir} holds another run ({held}){none}; continue it "
                      f"with --resume auto, clear it with --overwrite, or pick another --out-dir")
    answer = distributed.broadcast_object(answer, proc)
    if answer:
        raise UserError(answer)


# ---- the data ------------------------------------------------------------------------------
def media_problem(sample: data.Sample) -> str | None:
    """Why `sample`'s media file cannot be used, from the file system alone: "missing" (no such
    file) or "wrong type" (by extension, an image file for a video entry or the reverse); None when
    it may be fine."""
    path = sample.media_path
    if not os.path.isfile(path):
        return "missing"
    ext = Path(path).suffix.lower()
    if ext in (IMAGE_EXT if sample.data_type == "video" else VIDEO_EXT):
        return "wrong type"
    return None


def media_opens(sample: data.Sample) -> str | None:
    """None when the sample's media file opens (decord for videos: frame count and fps; PIL verify
    for images; nothing is decoded), else the reason, starting with 'missing' or 'undecodable'.
    eval.py and blind_filter.py check every item with it."""
    path = sample.media_path
    if not os.path.isfile(path):
        return f"missing: {path}"
    try:
        if sample.data_type == "video":
            import decord
            decord.logging.set_level(decord.logging.QUIET)         # ffmpeg's stderr noise
            vr = decord.VideoReader(path, num_threads=1)
            if len(vr) < 1 or not vr.get_avg_fps() > 0:
                return f"undecodable: {path}: {len(vr)} frames at {vr.get_avg_fps()} fps"
        else:
            from PIL import Image
            with Image.open(path) as img:
                img.verify()
    except Exception as e:  # decord: RuntimeError/DECORDError; PIL: UnidentifiedImageError/OSError
        return f"undecodable: {path}: {type(e).__name__}: {str(e)[:200]}"
    return None


def check_media(samples: list[data.Sample], json_path: str, root: str | None, flag: str,
                what: str = "") -> None:
    """Stop before any model loads when no sample's media file is usable (`media_problem`), with a
    message for the cause (`root`: the folder paths were resolved against, None: the JSON's; `flag`:
    the flag that sets it; `what`: "held-out " or ""); when only some are, print how many (they are
    skipped when drawn: L2, E1). Raises config.UserError."""
    problems = [(s, why) for s in samples if (why := media_problem(s))]
    if not problems:
        return
    first, why = problems[0]
    kinds = sorted({w for _, w in problems})
    n = len(samples)
    if len(problems) == n and kinds == ["missing"]:
        raise UserError(f"{json_path}: none of its {n} {what}samples has readable media, resolved "
                        f"against {root or 'the JSON folder'} (e.g. {first.media_path}: no such "
                        f"file); set {flag}")
    if len(problems) == n:
        counts = ", ".join(f"{sum(w == k for _, w in problems)} {k}" for k in kinds)
        raise UserError(f"{json_path}: none of its {n} {what}samples has usable media ({counts}; "
                        f"e.g. entry {first.entry}: {why}: {first.media_path} for data_type "
                        f"{first.data_type!r})")
    if on_main_rank():
        print(f"{json_path}: {len(problems)} of {n} media files unusable ({', '.join(kinds)}; e.g. "
              f"entry {first.entry}: {first.media_path}): those entries are skipped", flush=True)


def check_data(cfg, train_json: str, eval_sets: list[tuple[str, str]] = (),
               require_process: bool = False) -> list[data.Sample]:
    """Load the training JSON (schema: data.load_samples, against cfg.media_root) and check its
    media (`check_media`), and the same for the first cfg.eval_samples of every held-out set
    [(name, JSON)] (heldout.parse_sets; against cfg.eval_media_root or cfg.media_root when
    --eval-data was given), before any model loads. Returns the training samples. Raises
    config.UserError for bad data."""
    samples = data.load_samples(train_json, cfg.media_root or None, require_process=require_process)
    check_media(samples, train_json, cfg.media_root or None, "--media-root")
    root = (cfg.eval_media_root or cfg.media_root or None) if cfg.eval_data else None
    for _, path in eval_sets:
        held = data.load_samples(path, root)[:cfg.eval_samples]
        check_media(held, path, root, "--eval-media-root", "held-out ")
    return samples


def check_benchmarks(benches: list[tuple[str, str]], media_root: str, limit: int = 0) -> None:
    """eval.py's benchmarks [(name, JSON)] before the model loads: each JSON's schema
    (data.load_samples) and that some of its media (of its first `limit` items when > 0) exist
    (`check_media`; the rest are excluded later, E1). Raises config.UserError for bad data."""
    for _, path in benches:
        samples = data.load_samples(path, media_root or None)
        check_media(samples[:limit] if limit > 0 else samples, path, media_root or None,
                    "--media-root")
