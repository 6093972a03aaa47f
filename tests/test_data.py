"""Tests for data.py and pixels.py: schema validation, prompt text, frame/size rules (notes §5, §8),
decoding, resizing, and patchify against Hugging Face's Qwen2-VL image processor."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import data
import pixels
from data import Sample, build_prompt_text, build_question, load_samples
from pixels import (MediaError, patchify, read_image, read_video, resize_frames,
                    sample_frame_indices, shuffle_frames, smart_nframes, smart_resize)

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
VIDEO1 = SHARED_MEDIA / "video1.mp4"
RGBA_PNG = SHARED_MEDIA / "rgba_480x320.png"
needs_shared = pytest.mark.skipif(not SHARED_MEDIA.is_dir(),
                                  reason="../shared/media is absent (fresh clone)")

TRAIN_MAX = pixels.effective_video_max_pixels(16)  # 105369 with the shipped constants


def hf_image_processor():
    import transformers

    return transformers.Qwen2VLImageProcessorPil()


def write_mp4(path, n_frames=60, fps=30, height=64, width=96):
    """Lossless H.264 (crf 0, yuv420p) where frame i is flat grey 4*i: decoded values are exact."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": "0"}
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 4 * i, np.uint8),
                                           format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


# ---- frame and size rules (notes §8) ----------------------------------------------------------
def test_constants():
    assert pixels.VIDEO_MIN_PIXELS == pixels.VIDEO_MAX_PIXELS == 100352
    assert pixels.VIDEO_TOTAL_PIXELS == 90316800
    assert (pixels.IMAGE_MIN_PIXELS, pixels.IMAGE_MAX_PIXELS) == (3136, 200704)
    assert TRAIN_MAX == 105369


@pytest.mark.parametrize("hw, max_pixels, expected", [
    ((360, 640), TRAIN_MAX, (224, 420)), ((720, 1280), TRAIN_MAX, (224, 420)),
    ((1080, 1920), TRAIN_MAX, (224, 420)), ((360, 640), 200704, (336, 588)),
    ((480, 640), TRAIN_MAX, (280, 364)), ((480, 640), 200704, (364, 504)),
    ((240, 320), TRAIN_MAX, (280, 392)), ((240, 320), 200704, (280, 392)),
    ((112, 112), TRAIN_MAX, (336, 336)),
])
def test_smart_resize_video_worked_numbers(hw, max_pixels, expected):
    assert smart_resize(*hw, 28, pixels.VIDEO_MIN_PIXELS, max_pixels) == expected


@pytest.mark.parametrize("hw, expected", [((1000, 1000), (448, 448)), ((50, 50), (56, 56)),
                                          ((3000, 4000), (364, 504)), ((320, 480), (308, 476))])
def test_smart_resize_image_worked_numbers(hw, expected):
    assert smart_resize(*hw, 28, pixels.IMAGE_MIN_PIXELS, pixels.IMAGE_MAX_PIXELS) == expected


def test_smart_resize_rounding_and_errors():
    # round(1.5) = 2, round(2.5) = 2: ties to even
    assert smart_resize(42, 70, 28, 1, 10**9) == (56, 56)
    assert smart_resize(10, 10, 28, 1, 10**9) == (28, 28)  # at least one factor
    assert smart_resize(28, 5600, 28, 1, 10**9) == (28, 5600)  # ratio exactly 200 is allowed
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(28, 5601)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


@pytest.mark.parametrize("seconds, expected",
                         [(10, 16), (5, 10), (3, 6), (1.5, 4), (1, 4), (60, 16)])
def test_smart_nframes_examples_at_30fps(seconds, expected):
    assert smart_nframes(int(seconds * 30), 30.0) == expected


def test_smart_nframes_rules():
    assert smart_nframes(491, 22.29) == 16
    assert smart_nframes(491, 22.29, max_frames=64) == 44  # 22 s * 2 fps caps it (notes §10)
    assert smart_nframes(491, 22.29, nframes=32) == 32
    # ties to even
    assert smart_nframes(100, 30.0, nframes=7) == 8 and smart_nframes(100, 30.0, nframes=5) == 4
    assert smart_nframes(3, 30.0) == 2  # max_frames = floor2(min(16, 3)) = 2
    assert (smart_nframes(300, 30.0, max_frames=15) == 14
            and smart_nframes(300, 30.0, min_frames=19, fps=0.1) == 16)
    # min_frames rounds up to 20
    assert smart_nframes(300, 30.0, min_frames=19, max_frames=64, fps=0.1) == 20
    with pytest.raises(ValueError, match="total_frames"):
        smart_nframes(1, 30.0)
    with pytest.raises(ValueError, match="total_frames"):
        smart_nframes(10, 30.0, nframes=12)


def test_sample_frame_indices():
    assert (sample_frame_indices(491, 16)
            == [0, 33, 65, 98, 131, 163, 196, 229, 261, 294, 327, 359, 392, 425, 457, 490])
    assert sample_frame_indices(60, 4) == [0, 20, 39, 59]
    assert sample_frame_indices(6, 4) == [0, 2, 3, 5]  # 1.667 -> 2, 3.333 -> 3
    assert sample_frame_indices(4, 7) == [0, 0, 1, 2, 2, 2, 3]  # 0.5 -> 0, 2.5 -> 2 (ties to even)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)


def test_effective_video_max_pixels():
    # int(100352 * 1.05)
    assert pixels.effective_video_max_pixels(16, 100352, 100352, 90316800) == 105369
    assert pixels.effective_video_max_pixels(32, 100352, 200704, 90316800) == 200704
    # total_pixels / T * 2
    assert pixels.effective_video_max_pixels(20, 3136, 200704, 1_000_000) == 100000


# ---- prompt text (notes §5) -------------------------------------------------------------------
def make_sample(problem_type="multiple choice", options=("A. red", "B. blue")):
    return Sample(7, "What colour is the ball?", "video", problem_type, list(options),
                  "<answer>B</answer>", "./v.mp4", "/abs/v.mp4")


TRAIN_TAIL = ("\nPlease think about this question as if you were a human pondering deeply. "
              "Engage in an internal dialogue using expressions such as 'let me think', 'wait', "
              "'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought "
              "expressions It's encouraged to include self-reflection or verification in the "
              "reasoning process. Provide your detailed reasoning between the <think> </think> "
              "tags, and then give your final answer between the <answer> </answer> tags.")
EVAL_TAIL = TRAIN_TAIL.replace("<think> </think>", "<think> and </think>").replace(
    "<answer> </answer> tags.", "<answer> and </answer> tags.")
MC_TYPE = (" Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
           "<answer> </answer> tags.")
NUM_TYPE = (" Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer>"
            " tags.")


def test_build_question():
    assert build_question(make_sample()) == "What colour is the ball?Options:\nA. red\nB. blue\n"
    assert build_question(make_sample("numerical", [])) == "What colour is the ball?"


def test_build_prompt_text_exact_strings():
    mc, num = make_sample(), make_sample("numerical", [])
    q_mc = "What colour is the ball?Options:\nA. red\nB. blue\n"
    assert build_prompt_text(mc) == q_mc + TRAIN_TAIL + MC_TYPE
    assert build_prompt_text(mc, "eval") == q_mc + EVAL_TAIL + MC_TYPE
    assert build_prompt_text(num, "train") == "What colour is the ball?" + TRAIN_TAIL + NUM_TYPE
    assert build_prompt_text(num, "eval") == "What colour is the ball?" + EVAL_TAIL + NUM_TYPE
    assert data.TYPE_TEMPLATE["regression"] == NUM_TYPE
    assert set(data.TYPE_TEMPLATE) == set(data.PROBLEM_TYPES)
    with pytest.raises(ValueError, match="variant"):
        build_prompt_text(mc, "test")


# ---- load_samples --------------------------------------------------------------------------------
def entry(**over):
    e = {"problem_id": 2, "problem": "What appears?", "data_type": "video",
         "problem_type": "multiple choice", "options": ["A. a", "B. b"],
         "solution": "<answer>A</answer>", "path": "./LLaVA/x.mp4",
         "data_source": "LLaVA-Video-178K", "extra_key": 1}
    e.update(over)
    return {k: v for k, v in e.items() if v is not ...}


def write_json(tmp_path, entries, name="train.json"):
    p = tmp_path / name
    p.write_text(json.dumps(entries))
    return p


def test_load_samples_json_list_round_trip(tmp_path):
    entries = [entry(), entry(problem_id="n1", data_type="image", problem_type="numerical",
                              options=[], solution="<answer>3.5</answer>", path="./Math/y.png",
                              data_source=...),
               entry(problem_id=3, problem_type="OCR", options=..., process="<think>hm</think>")]
    samples = load_samples(write_json(tmp_path, entries))
    assert ([(s.entry, s.source) for s in samples]
            == [(i, str(tmp_path / "train.json")) for i in range(3)])
    assert samples[0] == Sample(2, "What appears?", "video", "multiple choice", ["A. a", "B. b"],
                                "<answer>A</answer>", "./LLaVA/x.mp4",
                                str(tmp_path / "LLaVA" / "x.mp4"), "LLaVA-Video-178K", "")
    assert (samples[1].problem_id, samples[1].options, samples[1].data_source) == ("n1", [], "")
    assert samples[1].media_path == str(tmp_path / "Math" / "y.png")
    assert samples[2].options == [] and samples[2].process == "<think>hm</think>"
    other = load_samples(tmp_path / "train.json", media_root=tmp_path / "media",
                         require_process=False)
    assert other[0].media_path == str(tmp_path / "media" / "LLaVA" / "x.mp4")


def test_load_samples_jsonl_round_trip(tmp_path):
    p = tmp_path / "cot.jsonl"
    rows = [entry(process="<think>a</think>"), entry(problem_id=9, problem_type="free-form",
                                                     options=[], process="<think>b</think>")]
    p.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    samples = load_samples(p, require_process=True)
    assert [s.problem_id for s in samples] == [2, 9] and [s.entry for s in samples] == [0, 1]
    assert [s.process for s in samples] == ["<think>a</think>", "<think>b</think>"]


@pytest.mark.parametrize("bad, field, words", [
    (dict(problem_type="mcq"), "problem_type", "unknown value 'mcq'; expected one of"),
    (dict(data_type="audio"), "data_type", "unknown value 'audio'"),
    (dict(problem=...), "problem", "missing"),
    (dict(problem=3), "problem", "expected str, got int"),
    (dict(solution=["A"]), "solution", "expected str, got list"),
    (dict(options=[]), "options", "empty list"),
    (dict(options=...), "options", "missing"),
    (dict(options="A. a"), "options", "expected list"),
    (dict(options=["A. a", 2]), "options", "list of strings"),
    (dict(path=""), "path", "empty"),
    (dict(path=...), "path", "missing"),
    (dict(data_source=5), "data_source", "expected str"),
    (dict(problem_type="numerical", options=[1]), "options", "list of strings"),
])
def test_load_samples_errors_name_file_entry_field(tmp_path, bad, field, words):
    p = write_json(tmp_path, [entry(), entry(problem_id=42, **bad)])
    with pytest.raises(ValueError) as err:
        load_samples(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: entry 1 (problem_id 42): field '{field}': ")
    assert words in msg


def test_load_samples_error_without_problem_id(tmp_path):
    p = write_json(tmp_path, [entry(problem_id=...)])
    with pytest.raises(ValueError, match=r"train\.json: entry 0: field 'problem_id': missing"):
        load_samples(p)
    p = write_json(tmp_path, [entry(problem_id=True)])
    with pytest.raises(ValueError, match=r"entry 0 \(problem_id True\): field 'problem_id': "
                                         r"expected int or str"):

        load_samples(p)


def test_load_samples_require_process(tmp_path):
    p = write_json(tmp_path, [entry(process="<think>x</think>"), entry(problem_id=5)])
    with pytest.raises(ValueError, match=r"entry 1 \(problem_id 5\): field 'process': missing"):
        load_samples(p, require_process=True)
    assert load_samples(p)[1].process == ""
    p = write_json(tmp_path, [entry(process="  ")])
    with pytest.raises(ValueError, match=r"entry 0 \(problem_id 2\): field 'process': empty"):
        load_samples(p, require_process=True)


def test_load_samples_file_level_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train\.json: expected a JSON list"):
        load_samples(write_json(tmp_path, {"a": 1}))
    with pytest.raises(ValueError, match=r"train\.json: entry 1: expected a JSON object, got list"):
        load_samples(write_json(tmp_path, [entry(), [1]]))
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(entry()) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2: invalid JSON"):
        load_samples(p)
    (tmp_path / "y.json").write_text("[{]")
    with pytest.raises(ValueError, match=r"y\.json: invalid JSON"):
        load_samples(tmp_path / "y.json")


# ---- resizing and images -------------------------------------------------------------------------
def test_resize_frames_close_to_pillow_bicubic():
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=gen) * 255,
                                             size=(240, 320), mode="bilinear", align_corners=False)
    noise = torch.randint(-20, 21, (1, 3, 240, 320), generator=gen)
    # (2, 3, 240, 320)
    frames = (smooth + noise).round().clamp(0, 255).to(torch.uint8).expand(2, -1, -1, -1)
    out = resize_frames(frames, 112, 168)
    assert out.shape == (2, 3, 112, 168) and out.dtype == torch.uint8
    pil = Image.fromarray(frames[0].permute(1, 2, 0).numpy()).resize((168, 112), Image.BICUBIC)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    assert (out[0].float() - ref).abs().mean() < 2.0
    assert torch.equal(out[0], out[1])
    assert torch.equal(resize_frames(frames, 240, 320), frames)  # same size: unchanged
    up = resize_frames(torch.full((1, 3, 4, 4), 200, dtype=torch.uint8), 28, 56)
    assert up.shape == (1, 3, 28, 56) and bool((up == 200).all())  # a flat image stays flat


def test_read_image_composites_alpha_onto_white(tmp_path):
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:28, :, 3] = 0  # top half fully transparent
    rgba[28:, :28, 3] = 255  # opaque
    rgba[28:, 28:, 3] = 128  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (1, 3, 56, 56) and img.dtype == torch.uint8
    assert bool((img[0, :, :28] == 255).all())
    assert img[0, :, 40, 10].tolist() == [10, 20, 30]
    blended = img[0, :, 40, 40].tolist()  # 255 * (1 - a) + c * a with a = 128/255
    assert all(abs(b - (255 * 127 + c * 128) / 255) <= 1 for b, c in zip(blended, (10, 20, 30)))

    la = Image.fromarray(
        np.stack([np.full((56, 56), 40, np.uint8), np.zeros((56, 56), np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert bool((read_image(tmp_path / "la.png") == 255).all())
    pal = Image.new("P", (56, 56), 1)
    pal.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)
    assert bool((read_image(tmp_path / "p.png") == 255).all())
    Image.new("L", (56, 56), 77).save(tmp_path / "l.png")
    assert bool((read_image(tmp_path / "l.png") == 77).all())


def test_read_image_resizes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 1000, 3), np.uint8)).save(tmp_path / "wide.png")
    # rounded: 4 and 36 patches of 28
    assert read_image(tmp_path / "wide.png").shape == (1, 3, 112, 1008)
    assert read_image(tmp_path / "wide.png", max_pixels=50000).shape == (1, 3, 56, 700)
    with pytest.raises(MediaError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="junk.png"):
        read_image(tmp_path / "junk.png")


# ---- patchify ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(56, 84), (112, 224), (308, 196), (56, 56)])
def test_patchify_matches_hf_image_processor(hw):
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    arr = rng.integers(0, 256, (*hw, 3), np.uint8)
    ref = hf_image_processor()(images=Image.fromarray(arr), return_tensors="pt")
    pixel_values, grid = patchify(torch.from_numpy(arr).permute(2, 0, 1)[None])
    assert grid.dtype == torch.int64 and grid.tolist() == ref["image_grid_thw"][0].tolist()
    assert grid.tolist() == [1, hw[0] // 14, hw[1] // 14]
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == ref["pixel_values"].shape
    torch.testing.assert_close(pixel_values, ref["pixel_values"], atol=1e-4, rtol=0)
    # a video of two identical frames is the image
    video_values, video_grid = patchify(
        torch.from_numpy(arr).permute(2, 0, 1)[None].expand(2, -1, -1, -1))
    assert video_grid.tolist() == grid.tolist() and torch.equal(video_values, pixel_values)


@needs_shared
def test_patchify_real_rgba_png_matches_hf():
    img = read_image(RGBA_PNG)
    assert img.shape == (1, 3, 308, 476)
    ref = hf_image_processor()(images=Image.fromarray(img[0].permute(1, 2, 0).numpy()),
                               return_tensors="pt")
    pixel_values, grid = patchify(img)
    assert grid.tolist() == ref["image_grid_thw"][0].tolist() == [1, 22, 34]
    torch.testing.assert_close(pixel_values, ref["pixel_values"], atol=1e-4, rtol=0)


def test_patchify_video_layout_by_index_formula():
    T, C, H, W = 4, 3, 56, 84
    ids = torch.arange(T * C * H * W, dtype=torch.float32).reshape(T, C, H, W)  # value = flat index
    pv, grid = patchify(ids, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert grid.tolist() == [2, 4, 6] and pv.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    got = (pv.double() * 255).round()
    hb, wb = 4 // 2, 6 // 2
    for r in range(pv.shape[0]):
        ti, rest = divmod(r, hb * wb * 4)
        bh, rest = divmod(rest, wb * 4)
        bw, rest = divmod(rest, 4)
        mh, mw = divmod(rest, 2)
        # every 37th column covers all (c, tp, py, px) combinations
        for k in range(0, pv.shape[1], 37):
            c, rest = divmod(k, 2 * 14 * 14)
            tp, rest = divmod(rest, 14 * 14)
            py, px = divmod(rest, 14)
            t, y, x = 2 * ti + tp, (2 * bh + mh) * 14 + py, (2 * bw + mw) * 14 + px
            assert got[r, k] == ((t * C + c) * H + y) * W + x
    # odd T: the last frame is repeated (3 frames -> tubelets (0, 1), (2, 2))
    pv3, grid3 = patchify(ids[:3], mean=(0.0,) * 3, std=(1.0,) * 3)
    assert grid3.tolist() == [2, 4, 6]
    assert torch.equal(pv3[:24], pv[:24])
    second = pv3[24:].reshape(24, 3, 2, 196)
    assert torch.equal(second[:, :, 0], second[:, :, 1])


def test_patchify_errors():
    with pytest.raises(ValueError, match="multiples of 28"):
        patchify(torch.zeros(2, 3, 56, 70, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected frames"):
        patchify(torch.zeros(3, 56, 56, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected frames"):
        patchify(torch.zeros(0, 3, 56, 56, dtype=torch.uint8))


def test_shuffle_frames_is_a_seeded_permutation():
    frames = torch.arange(16).view(16, 1, 1, 1).expand(16, 3, 2, 2).contiguous()
    shuffled, perm = shuffle_frames(frames, torch.Generator().manual_seed(3))
    assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(16))
    assert torch.equal(shuffled[:, 0, 0, 0], perm) and not torch.equal(perm, torch.arange(16))
    again, perm2 = shuffle_frames(frames, torch.Generator().manual_seed(3))
    assert torch.equal(perm, perm2) and torch.equal(shuffled, again)


# ---- videos --------------------------------------------------------------------------------------
def test_read_video_generated_mp4(tmp_path):
    path = write_mp4(tmp_path / "grey.mp4")  # 60 frames, 30 fps, 64x96, frame i is grey 4*i
    clip = read_video(path)
    assert clip.indices == [0, 20, 39, 59]  # 2 s * 2 fps = 4 frames
    assert clip.sample_fps == pytest.approx(4 / 60 * 30)
    # smart_resize upscale
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (4, 3, 280, 392)
    assert (clip.frames.float().mean(dim=(1, 2, 3)).tolist()
            == pytest.approx([0, 80, 156, 236], abs=1))
    few = read_video(path, nframes=6, min_pixels=3136, max_pixels=3136 * 4)
    # 4704 pixels: in range
    assert few.indices == [0, 12, 24, 35, 47, 59] and few.frames.shape == (6, 3, 56, 84)
    pixel_values, grid = patchify(few.frames)
    assert grid.tolist() == [3, 4, 6] and pixel_values.shape == (72, 1176)


def test_read_video_media_errors(tmp_path):
    with pytest.raises(MediaError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(bytes(range(256)) * 20)
    with pytest.raises(MediaError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4"):
        read_video(tmp_path / "empty.mp4")


@needs_shared
def test_read_video_real_training_defaults():
    clip = read_video(VIDEO1)
    assert (clip.indices
            == [0, 33, 65, 98, 131, 163, 196, 229, 261, 294, 327, 359, 392, 425, 457, 490])
    assert clip.frames.shape == (16, 3, 224, 420) and clip.frames.dtype == torch.uint8
    assert clip.sample_fps == pytest.approx(0.7264, abs=1e-4)
    pixel_values, grid = patchify(clip.frames)
    assert grid.tolist() == [8, 16, 30] and int(grid.prod()) // 4 == 960
    assert pixel_values.shape == (8 * 16 * 30, 1176)


@needs_shared
def test_read_video_real_eval_settings():
    clip = read_video(VIDEO1, nframes=32, max_pixels=200704)
    assert len(clip.indices) == 32 and clip.frames.shape == (32, 3, 336, 588)
