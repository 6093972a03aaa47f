"""loader.py: per-sample generators, the prefetcher and the frame cache give exactly what
pixels.prepare gives; unreadable media are skipped and counted with their JSON entry."""
import os

import pytest
import torch
from transformers import AutoTokenizer

import data
import loader
import pixels
from builtin import tiny

MEDIA = pixels.MediaConfig(**tiny.TINY_MEDIA)


def test_sample_generator_reproducible_and_distinct():
    draw = lambda *a: torch.randperm(16, generator=loader.sample_generator(*a)).tolist()
    assert draw(42, 0, 5) == draw(42, 0, 5)
    assert len({tuple(draw(*a)) for a in [(42, 0, 5), (42, 1, 5), (42, 0, 6), (43, 0, 5)]}) == 4
    with pytest.raises(ValueError):
        loader.sample_generator(0, 0, -1)


def assert_same_prepared(a: pixels.Prepared, b: pixels.Prepared):
    assert a.sample == b.sample and torch.equal(a.prompt_ids, b.prompt_ids)
    for va, vb in ((a.visual, b.visual), (a.shuffled_visual, b.shuffled_visual)):
        assert (va is None) == (vb is None)
        if va is not None:
            assert (torch.equal(va.pixel_values, vb.pixel_values)
                    and torch.equal(va.grid_thw, vb.grid_thw))
            assert va.second_per_grid == vb.second_per_grid and va.data_type == vb.data_type


def test_prefetcher_equals_direct_prepare_and_skips_bad_media(builtin, tmp_path):
    tok = AutoTokenizer.from_pretrained(builtin[1])
    samples = data.load_samples(builtin[0]["train"])[:7]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    samples[2] = data.Sample(**{**samples[2].__dict__, "data_type": "video",
                                "media_path": str(broken)})
    samples[5] = data.Sample(**{**samples[5].__dict__, "media_path": str(tmp_path / "missing.png")})
    direct = {}
    for i, s in enumerate(samples):
        try:
            direct[i] = pixels.prepare(s, tok, MEDIA, shuffled=True,
                                       generator=loader.sample_generator(7, 1, i))
        except pixels.MediaError:
            pass
    assert sorted(direct) == [0, 1, 3, 4, 6]
    assert any(p.shuffled_visual is not None for p in direct.values())
    cache = loader.FrameCache(tmp_path / "frames")
    for run, kw in enumerate([dict(workers=2, depth=3), dict(workers=2, depth=5, cache=cache),
                              dict(cache=cache)]):
        with loader.Prefetcher(samples, tok, MEDIA, shuffled=True, seed=7, rank=1, **kw) as pf:
            got = list(pf)
            assert [i for i, _ in got] == sorted(direct) and pf.skipped == 2, run
            src = builtin[0]["train"]                                # entry index in the JSON, path
            assert [e.split(": ")[0] for e in pf.skipped_errors] == [
                f"entry 2 of {src} ({broken})", f"entry 5 of {src} ({tmp_path / 'missing.png'})"]
            for i, p in got:
                assert_same_prepared(p, direct[i])
    assert cache.misses == 5 and cache.hits == 5
    with loader.Prefetcher(samples, tok, MEDIA, shuffled=False, seed=7) as pf:
        batch, skipped = pf.take(3)                                   # samples 0, 1, (2 skipped), 3
        assert [p.sample for p in batch] == [samples[0], samples[1], samples[3]] and skipped == 1
        assert pf.consumed == 4


def test_frame_cache_identical_frames_and_invalidation(builtin, tmp_path):
    video = next(s for s in data.load_samples(builtin[0]["train"]) if s.data_type == "video")
    copy = tmp_path / "clip.mp4"
    copy.write_bytes(open(video.media_path, "rb").read())
    video = data.Sample(**{**video.__dict__, "media_path": str(copy)})
    cache = loader.FrameCache(tmp_path / "frames")
    frames, fps, times, indices = pixels.load_visual(video, MEDIA)              # (T, 3, H, W) uint8
    for _ in range(2):
        got, got_fps, got_times, got_indices = cache.load(video, MEDIA)
        assert (torch.equal(got, frames) and got.dtype == torch.uint8 and got_fps == fps
                and got_times == times)
        assert got_indices == indices and len(indices) == frames.shape[0]
    assert (cache.misses, cache.hits) == (1, 1)
    fewer = pixels.MediaConfig(**{**MEDIA.__dict__, "max_frames": 4})  # a setting change: new entry
    got = cache.load(video, fewer).frames
    assert (cache.misses == 2 and torch.equal(got, pixels.load_visual(video, fewer)[0])
            and got.shape[0] == 4)
    assert cache.key(video, MEDIA) == cache.key(
        video, pixels.MediaConfig(**{**MEDIA.__dict__, "image_max_pixels": 1}))
    assert cache.key(video, MEDIA) != cache.key(
        video, pixels.MediaConfig(**{**MEDIA.__dict__, "patch_size": 16}))
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))        # the file changed: new entry
    cache.load(video, MEDIA)
    assert cache.misses == 3
    cache.file(cache.key(video, MEDIA)).write_bytes(b"garbage")      # a corrupt entry is recomputed
    got = cache.load(video, MEDIA).frames
    assert torch.equal(got, frames) and cache.misses == 4
