"""Background preparation of the next samples, so decoding and patchifying overlap the step.

The official trainer decodes a sample's video inside `compute_loss`, on the critical path (notes §1
step 2); here a few threads run `pixels.prepare` for the next samples while the policy generates and
trains on the current ones (L6):

    pf = Prefetcher(stream, tokenizer, media, shuffled=True, seed=seed, rank=rank)
    batch, skipped = pf.take(prompts_per_rank)      # list[pixels.Prepared], unusable ones skipped

Rules: (1) order and content are those of `pixels.prepare` in a loop: the one random step, the
shuffled-frame permutation (notes §1 step 4), is seeded by (seed, rank, sample index), so threads
never change results (L11); (2) a sample with unusable media (`pixels.MediaError`) is skipped and
counted, never replaced (L2, notes §9 item 9); its index is still consumed; (3) `FrameCache` keeps
decoded, resized frames keyed by (path, mtime, size, frame/pixel settings): epoch 2 skips decoding.
Threads, not processes: decord, PIL and torch release the GIL and the tokenizer is shared unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

import data
import pixels
from config import UserError

VIDEO_KEYS = ("fps", "min_frames", "max_frames", "nframes", "video_min_pixels", "video_max_pixels",
              "video_total_pixels", "patch_size", "merge_size")
IMAGE_KEYS = ("image_min_pixels", "image_max_pixels", "patch_size", "merge_size")
CACHE_FORMAT = 4      # bump when the stored layout or the decoding changes (4: frame indices)
SKIP_PRINT_FULL = 5   # skips printed in full per Prefetcher; then a count at 10, 100, 1000, ...


def prompt_stream(samples, proc, seed: int, start: int = 0):
    """Endless stream of this rank's samples from position `start` (all resume needs): each epoch
    one permutation seeded by seed + epoch, shared by all ranks; rank r takes r, r + world, ..."""
    per_rank = len(range(proc.rank, len(samples), proc.world))
    if per_rank == 0:
        raise ValueError(f"{len(samples)} samples cannot feed {proc.world} ranks")
    i = start
    while True:
        epoch, k = divmod(i, per_rank)
        order = np.random.default_rng(seed + epoch).permutation(len(samples))[proc.rank::proc.world]
        yield samples[order[k]]
        i += 1


def sample_generator(seed: int, rank: int, index: int) -> torch.Generator:
    """(L11) The CPU generator of sample `index` of rank `rank`'s stream, from numpy's
    SeedSequence([seed, rank, index]): nearby seeds, ranks and indices give unrelated streams."""
    if min(seed, rank, index) < 0:
        raise ValueError(f"sample_generator: seed, rank, index must be >= 0, got {seed}, {rank}, "
                         f"{index}")
    state = np.random.SeedSequence([seed, rank, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)   # < 2**63


class FrameCache:
    """Decoded media on disk, one `<sha256>.pt` per (file, settings): frames uint8 (T, 3, H, W),
    sample_fps, frame_times (s), frame_indices, key. `load` equals `pixels.load_visual` bit for
    bit; writes are atomic (temp file + rename), so threads and ranks may share a folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def key(self, sample: data.Sample, media: pixels.MediaConfig) -> dict:
        """A media file's key: absolute path, mtime (ns), size (bytes), data_type and the settings
        that change its frames. Raises pixels.MediaError when the file does not exist."""
        path = os.path.abspath(sample.media_path)
        try:
            st = os.stat(path)
        except OSError as e:
            raise pixels.MediaError(f"{path}: cannot read {sample.data_type}: "
                                    f"{type(e).__name__}: {e}") from e
        names = VIDEO_KEYS if sample.data_type == "video" else IMAGE_KEYS
        return {"format": CACHE_FORMAT, "path": path, "mtime_ns": st.st_mtime_ns,
                "size": st.st_size, "data_type": sample.data_type,
                **{k: getattr(media, k) for k in names}}

    def file(self, key: dict) -> Path:
        """Where the entry for `key` lives."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / (digest + ".pt")

    def load(self, sample: data.Sample, media: pixels.MediaConfig) -> pixels.Decoded:
        """pixels.Decoded from the cache; decoded and stored on a miss."""
        key = self.key(sample, media)
        f = self.file(key)
        if f.exists():
            try:
                entry = torch.load(f, weights_only=True)
                if entry["key"] == key:
                    with self._lock:
                        self.hits += 1
                    return pixels.Decoded(entry["frames"], float(entry["sample_fps"]),
                                          tuple(entry["frame_times"]),
                                          tuple(entry["frame_indices"]))
            except Exception as e:                          # a truncated or foreign file: redo it
                print(f"[cache] {f}: unreadable ({type(e).__name__}), recomputing", file=sys.stderr)
        decoded = pixels.load_visual(sample, media)
        tmp = f.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        torch.save({"frames": decoded.frames.contiguous(), "sample_fps": float(decoded.sample_fps),
                    "frame_times": list(decoded.frame_times),
                    "frame_indices": list(decoded.frame_indices), "key": key}, tmp)
        os.replace(tmp, f)
        with self._lock:
            self.misses += 1
        return decoded


class UnusableMedia(UserError, RuntimeError):
    """More media files in a row than Prefetcher's max_consecutive_skips could not be used: a user
    error (the data, or --media-root) with the cause in its message: all missing, or how many
    missing / unreadable / unusable (wrong type, too few frames, ...) with the last reason."""

    def __init__(self, run: int, last_path: str, reasons: list[str]):
        missing = sum("FileNotFoundError" in r for r in reasons)
        unreadable = sum(("cannot open" in r or "cannot read" in r or "cannot decode" in r)
                         and "FileNotFoundError" not in r for r in reasons)
        if missing == len(reasons):
            why = (f"all missing (the last: {last_path}); check --media-root: entry paths are "
                   f"resolved against it")
        else:
            why = (f"{missing} missing, {unreadable} unreadable (corrupt, or not a video/image), "
                   f"{len(reasons) - missing - unreadable} unusable at these frame/pixel settings; "
                   f"the last: "
                   f"{reasons[-1] if reasons else last_path}")
        super().__init__(f"{run} unusable media files in a row: {why}")


def skip_message(sample: data.Sample, index: int, error: Exception) -> str:
    """"entry 17 of train.json (/data/x.mp4): reason" for a skipped sample ("stream sample {index}"
    for one not made by data.load_samples); the reason is the error without its leading path."""
    reason = str(error)
    for p in (sample.media_path, os.path.abspath(sample.media_path)):
        if reason.startswith(p + ": "):
            reason = reason[len(p) + 2:]
            break
    where = (f"entry {sample.entry} of {sample.source}" if sample.entry >= 0
             else f"stream sample {index}")
    return f"{where} ({sample.media_path}): {reason}"


def _power_of_ten(n: int) -> bool:
    """True for 1, 10, 100, ... (when the skip count is printed)."""
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


class Prefetcher:
    """(index, pixels.Prepared) of a sample stream in order, `depth` ahead on `workers` threads.

    `consumed` is the stream position to checkpoint (resume: rebuild the stream there and pass
    start_index=consumed); more than max_consecutive_skips unusable samples in a row raise
    UnusableMedia (the entry points pass the data's size: every sample failed), its message fitting
    the cause. `close()` (or `with`) stops the threads.
    """

    def __init__(self, samples: Iterable[data.Sample], tokenizer, media: pixels.MediaConfig, *,
                 shuffled: bool, seed: int, rank: int = 0, variant: str = "train", depth: int = 4,
                 workers: int = 1, cache: FrameCache | None = None, start_index: int = 0,
                 max_consecutive_skips: int = 1000):
        if depth < 1 or workers < 1:
            raise ValueError(f"Prefetcher: depth and workers must be >= 1, got {depth}, {workers}")
        self.tokenizer, self.media = tokenizer, media
        self.shuffled, self.variant = shuffled, variant
        self.seed, self.rank, self.cache, self.depth = seed, rank, cache, depth
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped, self._run = 0, 0                   # skips in all, and in a row
        self.skipped_errors = deque(maxlen=100)          # the last messages, see skip_message
        self._source = iter(samples)
        self._next_index = self.consumed = start_index
        self._pending: deque[tuple[int, data.Sample, Future]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
        self._fill()

    def _work(self, sample: data.Sample, index: int) -> pixels.Prepared:
        gen = sample_generator(self.seed, self.rank, index)
        return pixels.prepare(sample, self.tokenizer, self.media, self.shuffled, self.variant, gen,
                              self.cache)

    def _fill(self) -> None:
        while len(self._pending) < self.depth:
            try:
                sample = next(self._source)
            except StopIteration:
                return
            self._pending.append((self._next_index, sample,
                                  self._pool.submit(self._work, sample, self._next_index)))
            self._next_index += 1

    def __iter__(self) -> Iterator[tuple[int, pixels.Prepared]]:
        return self

    def __next__(self) -> tuple[int, pixels.Prepared]:
        while self._pending:
            index, sample, fut = self._pending.popleft()
            self._fill()                                              # keep `depth` in flight
            self.consumed = index + 1
            try:
                out = fut.result()
            except pixels.MediaError as e:
                self.skipped += 1
                self._run += 1
                msg = skip_message(sample, index, e)
                self.skipped_errors.append(msg)
                if self.skipped <= SKIP_PRINT_FULL:
                    more = (" (further skips are counted, printed at 10, 100, 1000, ...)"
                            if self.skipped == SKIP_PRINT_FULL else "")
                    print(f"[skip] {msg}{more}", file=sys.stderr)
                elif _power_of_ten(self.skipped):
                    print(f"[skip] {self.skipped} samples skipped so far; latest: {msg}",
                          file=sys.stderr)
                if self._run > self.max_consecutive_skips:
                    recent = list(self.skipped_errors)[-self._run:]
                    raise UnusableMedia(self._run, sample.media_path, recent) from e
                continue
            self._run = 0
            return index, out
        raise StopIteration

    def take(self, n: int) -> tuple[list[pixels.Prepared], int]:
        """The next n prepared samples and how many were skipped to get them (train.py's step).
        Raises StopIteration if a finite stream ends first."""
        before = self.skipped
        out = [next(self)[1] for _ in range(n)]
        return out, self.skipped - before

    def close(self) -> None:
        """Cancel queued work and stop the threads (running items finish first)."""
        for _, _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
