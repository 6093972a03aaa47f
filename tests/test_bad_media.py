"""Bad input never stops or corrupts a run: media the frame/size rules reject are pixels.MediaError
naming the path, skipped and counted by the prefetcher (and by train.py) without substitutes; bad
data files fail loudly with the file and where; frame indices use the official float32 arithmetic.
All on real files written here."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import loader
import pixels
from conftest import ROOT

MEDIA = pixels.MediaConfig(max_frames=8, video_min_pixels=84 * 84, video_max_pixels=84 * 84,
                           image_max_pixels=84 * 84)
CODEC = "libx264" if "libx264" in av.codec.codecs_available else "mpeg4"


def write_clip(path, n_frames, height=64, width=96, fps=30):
    """A real H.264 (or MPEG-4 part 2) mp4 of n_frames flat grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 8 * i, np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture
def bad_files(tmp_path):
    """{name: path} of real files that decode but that the official rules reject."""
    Image.fromarray(np.full((10, 2010, 3), 90, np.uint8)).save(tmp_path / "wide_201.png")
    return {"one_frame": write_clip(tmp_path / "one_frame.mp4", 1),
            "wide_video": write_clip(tmp_path / "wide_201.mp4", 8, height=20, width=4020),
            "short": write_clip(tmp_path / "six_frames.mp4", 6),
            "wide_image": str(tmp_path / "wide_201.png")}


# ---- read_video / read_image: rule rejections are MediaError naming the path ---------------------
def test_one_frame_clip_is_media_error(bad_files):
    path = bad_files["one_frame"]
    with pytest.raises(pixels.MediaError) as err:
        pixels.read_video(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "too few frames (1 at" in msg and "total_frames=1" in msg
    assert isinstance(err.value.__cause__, ValueError)  # raise ... from the rule's error


def test_clip_shorter_than_nframes_is_media_error(bad_files):
    path = bad_files["short"]
    assert len(pixels.read_video(path, nframes=6).indices) == 6  # the clip itself decodes
    with pytest.raises(pixels.MediaError,
                       match=r"six_frames\.mp4: unusable video: too few frames \(6 at") as err:
        pixels.read_video(path, nframes=8)
    assert "nframes=8" in str(err.value)


def test_elongated_image_and_video_are_media_errors(bad_files):
    with pytest.raises(pixels.MediaError) as err:
        pixels.read_image(bad_files["wide_image"])
    assert str(err.value).startswith(f"{bad_files['wide_image']}: unusable image size 10x2010: ")
    assert "aspect ratio" in str(err.value)
    with pytest.raises(pixels.MediaError) as err:
        pixels.read_video(bad_files["wide_video"])
    assert str(err.value).startswith(
        f"{bad_files['wide_video']}: unusable video frame size 20x4020: ")
    assert "aspect ratio" in str(err.value)


def test_pixel_budget_that_shrinks_a_side_to_zero_is_media_error(tmp_path):
    Image.new("RGB", (2800, 28), (1, 2, 3)).save(tmp_path / "strip.png")       # ratio 100: allowed
    assert pixels.read_image(tmp_path / "strip.png").shape == (1, 3, 28, 2800)
    with pytest.raises(pixels.MediaError,
                       match=r"strip\.png: unusable image size 28x2800: .* gives 0x"):
        pixels.read_image(tmp_path / "strip.png", max_pixels=3136)  # height 28 / 5 floors to 0


def test_settings_no_file_can_meet_stay_value_errors(bad_files):
    with pytest.raises(ValueError, match="nframes must round to at least 2") as err:
        pixels.read_video(bad_files["short"], nframes=1)
    assert not isinstance(err.value, pixels.MediaError)
    with pytest.raises(ValueError, match="need 2 <= nframes"):  # the pure rule is unchanged
        pixels.smart_nframes(1, 30.0)


# ---- frame indices: the official float32 arithmetic ----------------------------------------------
@pytest.mark.parametrize("total, n", [(135_435, 64), (66_771, 128)])
def test_frame_indices_match_official_float32_linspace(total, n):
    official = torch.linspace(0, total - 1, n, dtype=torch.float32).round().long().tolist()
    assert pixels.sample_frame_indices(total, n) == official
    float64 = np.linspace(0, total - 1, n).round().astype(np.int64).tolist()
    assert float64 != official  # why float32 matters here
    assert (pixels.sample_frame_indices(total, n // 2)
            == np.linspace(0, total - 1, n // 2).round().tolist())


# ---- data files ----------------------------------------------------------------------------------
def test_non_utf8_data_file_names_file_and_offset(tmp_path):
    raw = b'[{"problem": "caf\xe9"}]'
    for name in ("latin1.json", "latin1.jsonl"):
        p = tmp_path / name
        p.write_bytes(raw if name.endswith(".json") else raw[1:-1] + b"\n")
        offset = p.read_bytes().index(b"\xe9")
        with pytest.raises(ValueError) as err:
            data.load_samples(p)
        assert str(err.value).startswith(
            f"{p}: not UTF-8 text: byte 0xe9 at byte offset {offset}: ")
        assert isinstance(err.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("name, text",
                         [("empty.json", "[]"), ("empty.json", " [ ]\n"), ("empty.jsonl", ""),
                                        ("empty.jsonl", "\n  \n")])
def test_empty_data_file_is_an_error(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match="no entries") as err:
        data.load_samples(p)
    assert str(err.value).startswith(f"{p}: ")


# ---- the prefetcher skips and counts them, never substitutes -------------------------------------
def mixed_json(builtin, bad_paths, tmp_path, n_good, bad_at):
    """A data file of n_good built-in train entries with an entry for each bad path inserted at the
    positions bad_at (absolute media paths); returns (path, media root)."""
    paths = builtin[0]
    entries = json.loads(paths["train"].read_text())[:n_good]
    for pos, bad in zip(bad_at, bad_paths):
        kind = "image" if bad.endswith(".png") else "video"
        entries.insert(pos,
                       {**entries[0], "problem_id": f"bad-{pos}", "data_type": kind, "path": bad})
    out = tmp_path / "mixed.json"
    out.write_text(json.dumps(entries))
    return out, paths["root"]


def test_prefetcher_skips_bad_media_by_entry_and_path(builtin, bad_files, tmp_path, capsys):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(builtin[1])
    bad = [bad_files[k] for k in ("one_frame", "wide_image", "wide_video", "short")]
    bad_at = [1, 3, 5, 8]
    json_path, root = mixed_json(builtin, bad, tmp_path, 6, bad_at)
    samples = data.load_samples(json_path, root)
    assert ([s.entry for s in samples] == list(range(10))
            and {s.source for s in samples} == {str(json_path)})
    media = pixels.MediaConfig(**{**MEDIA.__dict__, "nframes": 8})  # the 6-frame clip is too short
    good = [i for i in range(10) if i not in bad_at]
    with loader.Prefetcher(samples, tok, media, shuffled=True, seed=3, workers=2, depth=3) as pf:
        got = list(pf)
        assert pf.skipped == 4 and pf.consumed == 10
        assert [i for i, _ in got] == good  # in order, nothing in their place
        for i, p in got:
            assert p.sample is samples[i] and p.sample.entry == i
            direct = pixels.prepare(samples[i], tok, media, shuffled=True,
                                    generator=loader.sample_generator(3, 0, i))
            assert torch.equal(p.visual.pixel_values, direct.visual.pixel_values)
            assert torch.equal(p.prompt_ids, direct.prompt_ids)
        errors = list(pf.skipped_errors)
    err = capsys.readouterr().err
    for pos, path, words in zip(bad_at, bad, ["too few frames", "aspect ratio", "aspect ratio",
                                              "too few frames"]):
        line = f"[skip] entry {pos} of {json_path} ({path}): unusable "
        assert (line in err
                and any(e.startswith(line[7:]) and words in e for e in errors)), (line, err)


def test_prefetcher_quiet_after_a_few_skips_and_stops_on_a_wrong_media_root(builtin, tmp_path,
                                                                            capsys):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(builtin[1])
    samples = [data.Sample(i, "q", "image", "free-form", [], "<answer>a</answer>", f"./m{i}.png",
                           str(tmp_path / f"m{i}.png"), entry=i, source="list.json")
               for i in range(40)]
    with loader.Prefetcher(samples, tok, MEDIA, shuffled=False, seed=0,
                           max_consecutive_skips=24) as pf:
        with pytest.raises(RuntimeError) as err:
            list(pf)
        assert pf.skipped == 25 and len(pf.skipped_errors) == 25
    msg = str(err.value)
    assert "25 unusable media files in a row" in msg and "check --media-root" in msg
    assert str(tmp_path / "m24.png") in msg
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[skip]")]
    assert len(lines) == 6  # 5 in full, then the count at 10
    assert lines[0].startswith(
        f"[skip] entry 0 of list.json ({tmp_path / 'm0.png'}): cannot read image: ")
    assert "further skips are counted" in lines[4]
    assert lines[5].startswith("[skip] 10 samples skipped so far; latest: entry 9 of list.json")


# ---- train.py end to end -------------------------------------------------------------------------
def test_train_skips_and_counts_a_one_frame_clip(builtin, bad_files, tmp_path):
    from distributed import Dist
    json_path, root = mixed_json(builtin, [bad_files["one_frame"]], tmp_path, 3, [2])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "train.py"), "--model", str(builtin[1]), "--preset", "tiny",
           "--data", str(json_path), "--media-root", str(root), "--steps", "2", "--G", "2",
           "--max-completion-length", "4", "--prompts-per-rank", "2", "--cache-dir",
           str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # the bad entries the stream met while drawing the 2 x 2 good samples
    # (one epoch holds all 4 entries)
    samples = data.load_samples(json_path, root)
    seed = json.loads((tmp_path / "out" / "config.json").read_text())["seed"]
    stream, good, met = loader.prompt_stream(samples, Dist(), seed), 0, 0
    while good < 4:
        s = next(stream)
        met += s.entry == 2
        good += s.entry != 2
    assert met >= 1 and [r["step"] for r in rows] == [1, 2]
    assert sum(r["skipped_media"] for r in rows) == met
    assert (f"entry 2 of {json_path} ({bad_files['one_frame']}): unusable video: too few frames"
            in proc.stderr)



def test_skip_message_of_a_hand_built_sample_gives_the_stream_position(tmp_path):
    path = str(tmp_path / "x.png")
    s = data.Sample(1, "q", "image", "free-form", [], "<answer>a</answer>", "./x.png", path)
    assert (s.entry, s.source) == (-1, "")
    msg = loader.skip_message(s, 7,
                              pixels.MediaError(f"{path}: cannot read image: OSError: truncated"))
    assert msg == f"stream sample 7 ({path}): cannot read image: OSError: truncated"
