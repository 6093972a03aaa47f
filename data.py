"""Samples and pixels: the Video-R1 JSON schema, prompt text, frame sampling and resizing, patchify.

Everything between a Video-R1 JSON file and the tensors the Qwen2.5-VL vision tower eats:

    load_samples(json)   -> [Sample]                       notes §5 (schema)
    build_prompt_text(s) -> str                            notes §5 (templates, verbatim)
    read_video(path)     -> Clip(frames uint8 (T,3,H,W), sample_fps, indices)   notes §8
    read_image(path)     -> uint8 (1,3,H,W)                notes §8 fetch_image
    shuffle_frames(f)    -> (f[perm], perm)                notes §1 step 4
    patchify(frames)     -> pixel_values (t*h*w, 1176) float32, grid_thw (3,) int64 = (t, h, w)

Frame counts and sizes follow the official qwen_vl_utils 0.0.10 rules (notes §8) bit for bit: the
same rounding (Python round, ties to even), the same per-frame pixel budget, including its quirk
(notes §9 item 13). Resizing is torch bicubic with antialias on all frames at once, rounded back to
uint8, which is what torchvision's resize does on the uint8 tensor the official code feeds it.
Media that cannot be used raise MediaError naming the path: undecodable files, and files the frame/size
rules reject (one frame, a clip shorter than a fixed nframes, aspect ratio above 200, a side that the pixel
budget shrinks to 0), which the official code also raises for and then swallows. Callers skip and count such
samples, never substitute other media (notes §1 step 2 describes the official fallback we deliberately
do not copy).
"""

import json
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rewards import PROBLEM_TYPES

# ---- constants (notes §8, the shipped training values) ------------------------------------
IMAGE_FACTOR = 28  # patch_size 14 * merge_size 2
MAX_RATIO = 200
IMAGE_MIN_PIXELS = 4 * 28 * 28  # 3136
IMAGE_MAX_PIXELS = 256 * 28 * 28  # 200704
VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100352
VIDEO_MAX_PIXELS = 128 * 28 * 28  # 100352 (eval edits this to 256*28*28)
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # 90316800
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, used by the Qwen2-VL processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MediaError(RuntimeError):
    """A media file that cannot be read, decoded or used (too few frames, too elongated, ...); the message
    starts with the path."""


# ---- samples (notes §5) ----------------------------------------------------------------------
@dataclass
class Sample:
    """One Video-R1 entry (Video-R1-260k, Video-R1-COT-165k or Video-R1-eval schema, notes §5).

    ``entry`` and ``source`` say where it came from (0-based entry index, the JSON file); load_samples sets
    them, a Sample built by hand has -1 and "". They are provenance, not content: == ignores them."""

    problem_id: int | str
    problem: str
    data_type: str  # "image" | "video"
    problem_type: str  # one of PROBLEM_TYPES
    options: list[str]  # ["A. ...", ...]; [] for non-MC
    solution: str  # "<answer>GT</answer>"
    path: str  # as written in the JSON, e.g. "./videos/x.mp4"
    media_path: str  # absolute: media_root / path (leading "./" stripped)
    data_source: str = ""
    process: str = ""  # COT file only: "<think>...</think>"
    entry: int = field(default=-1, compare=False)  # 0-based index of the entry in `source`; -1: unknown
    source: str = field(default="", compare=False)  # the JSON / JSON Lines file it was read from


def _read_entries(json_path: str) -> list:
    """Entries of a JSON list file, or of a JSON Lines file (``.jsonl``, blank lines skipped).
    Raises FileNotFoundError; ValueError naming the file for text that is not UTF-8 (with the byte offset),
    invalid JSON (with the line for .jsonl), a non-list top level, or no entries at all."""
    with open(json_path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_path}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start}: "
                         f"{e.reason}") from e
    if json_path.endswith(".jsonl"):
        entries = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{json_path}: line {line_no}: invalid JSON: {e}") from e
        if not entries:
            raise ValueError(f"{json_path}: no entries (an empty JSON Lines file)")
        return entries
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: invalid JSON: {e}") from e
    if not isinstance(entries, list):
        raise ValueError(f"{json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        raise ValueError(f"{json_path}: no entries (an empty JSON list)")
    return entries


def load_samples(json_path, media_root=None, require_process: bool = False) -> list[Sample]:
    """(D1, D5) Read and validate a Video-R1 JSON list (or ``.jsonl``) into Samples (notes §5 schema).

    Args:
        json_path: path of the file. ``.jsonl`` means one JSON object per line; anything else a JSON list.
        media_root: folder that entry paths are relative to; default: the JSON file's folder.
        require_process: demand a non-empty ``process`` string (the COT-165k file, for SFT).
    Returns:
        list of Sample, in file order, never empty; Sample.entry is the 0-based entry index and
        Sample.source the file (json_path as given). Media files are NOT checked here (that happens at
        decode time).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: text that is not UTF-8 (names the file and the byte offset), bad JSON, no entries
            ("no entries"), or a bad entry; the message names the file, the 0-based entry index,
            the problem_id when there is one, and the field, e.g.
            "train.json: entry 17 (problem_id 42): field 'problem_type': unknown value 'mcq'; ...".
    Required: problem_id (int or str), problem, data_type, problem_type, solution, path (non-empty), and
    options (a non-empty list of strings) for multiple choice. For other types options may be absent or
    null (-> []). data_source and process are optional strings (null -> ""). Unknown keys are ignored.
    """
    json_path = os.fspath(json_path)
    root = os.path.abspath(os.path.dirname(json_path) if media_root is None else os.fspath(media_root))
    samples = []
    for i, e in enumerate(_read_entries(json_path)):
        if not isinstance(e, dict):
            raise ValueError(f"{json_path}: entry {i}: expected a JSON object, got {type(e).__name__}")
        pid = e.get("problem_id")
        where = f"{json_path}: entry {i}" + ("" if pid is None else f" (problem_id {pid})")

        def bad(field, msg):
            return ValueError(f"{where}: field '{field}': {msg}")

        def get(field, types, default=None, required=True):
            if field not in e or e[field] is None:
                if required:
                    raise bad(field, "missing")
                return default
            v = e[field]
            if not isinstance(v, types) or isinstance(v, bool):
                names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
                raise bad(field, f"expected {names}, got {type(v).__name__} {v!r:.60}")
            return v

        problem_id = get("problem_id", (int, str))
        problem = get("problem", str)
        data_type = get("data_type", str)
        if data_type not in ("image", "video"):
            raise bad("data_type", f"unknown value {data_type!r}; expected 'image' or 'video'")
        problem_type = get("problem_type", str)
        if problem_type not in PROBLEM_TYPES:
            raise bad("problem_type", f"unknown value {problem_type!r}; expected one of {PROBLEM_TYPES}")
        is_mc = problem_type == "multiple choice"
        options = get("options", list, default=[], required=is_mc)
        if not all(isinstance(o, str) for o in options):
            raise bad("options", f"expected a list of strings, got {options!r:.80}")
        if is_mc and not options:
            raise bad("options", "empty list for a multiple choice problem")
        solution = get("solution", str)
        path = get("path", str)
        if not path:
            raise bad("path", "empty string")
        data_source = get("data_source", str, default="", required=False)
        process = get("process", str, default="", required=require_process)
        if require_process and not process.strip():
            raise bad("process", "empty string (required for chain-of-thought data)")
        rel = path[2:] if path.startswith("./") else path
        samples.append(Sample(problem_id, problem, data_type, problem_type, list(options), solution,
                              path, os.path.normpath(os.path.join(root, rel)), data_source, process,
                              entry=i, source=json_path))
    return samples


# ---- prompt text (notes §5, quoted verbatim: this is the text the model was trained on) ------
QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, "
    "and then give your final answer between the <answer> </answer> tags."
)
QUESTION_TEMPLATE_EVAL = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, "
    "and then give your final answer between the <answer> and </answer> tags."
)
TYPE_TEMPLATE = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}


def build_question(sample: Sample) -> str:
    """The question text (notes §5): for multiple choice, problem + "Options:\\n" + one option per line
    (no separator between problem and "Options:", as official); otherwise the problem unchanged."""
    if sample.problem_type == "multiple choice":
        return sample.problem + "Options:\n" + "".join(opt + "\n" for opt in sample.options)
    return sample.problem


def build_prompt_text(sample: Sample, variant: str = "train") -> str:
    """The user-turn text: template(question) + TYPE_TEMPLATE[problem_type] (notes §5).

    variant "train" uses QUESTION_TEMPLATE (GRPO, SFT); "eval" uses QUESTION_TEMPLATE_EVAL (eval,
    inference, CoT generation). Raises ValueError for another variant or an unknown problem_type."""
    if variant not in ("train", "eval"):
        raise ValueError(f"build_prompt_text: variant must be 'train' or 'eval', got {variant!r}")
    if sample.problem_type not in TYPE_TEMPLATE:
        raise ValueError(f"build_prompt_text: problem {sample.problem_id}: unknown problem_type {sample.problem_type!r}")
    template = QUESTION_TEMPLATE if variant == "train" else QUESTION_TEMPLATE_EVAL
    return template.format(Question=build_question(sample)) + TYPE_TEMPLATE[sample.problem_type]


# ---- frame count and size rules (notes §8) ----------------------------------------------------
def round_by_factor(x: float, factor: int) -> int:
    """round(x / factor) * factor, Python round (ties to even) — notes §8."""
    return round(x / factor) * factor


def ceil_by_factor(x: float, factor: int) -> int:
    """ceil(x / factor) * factor — notes §8."""
    return math.ceil(x / factor) * factor


def floor_by_factor(x: float, factor: int) -> int:
    """floor(x / factor) * factor — notes §8."""
    return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: float = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) in pixels, both multiples of ``factor`` (qwen_vl_utils rule, notes §8).

    Round each side to the factor (at least one factor); if the area exceeds max_pixels, scale down by
    sqrt(h*w/max_pixels) and floor; else if below min_pixels, scale up and ceil. There is no second
    check, so a downscale can land below min_pixels (notes §9 item 13).
    Raises ValueError for non-positive sizes, aspect ratio > 200, or a result with a zero side.
    Example: (360, 640, 28, 100352, 105369) -> (224, 420).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"smart_resize: absolute aspect ratio must be at most {MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width)} for {height}x{width}")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    if h_bar == 0 or w_bar == 0:
        raise ValueError(f"smart_resize: {height}x{width} with max_pixels {max_pixels} gives {h_bar}x{w_bar}")
    return h_bar, w_bar


def smart_nframes(total_frames: int, video_fps: float, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES,
                  max_frames: int = FPS_MAX_FRAMES, nframes: int | None = None) -> int:
    """Number of frames to sample, an even count (qwen_vl_utils rule, notes §8).

    nframes given: round_by_factor(nframes, 2) (fps, min/max frames ignored). Otherwise
    n = duration * fps = total_frames / video_fps * fps, clamped to [ceil2(min_frames),
    floor2(min(max_frames, total_frames))] and to total_frames, then floored to even.
    Examples at 30 fps: 10 s -> 16, 5 s -> 10, 3 s -> 6, 1.5 s -> 4, 1 s -> 4.
    Raises ValueError unless 2 <= result <= total_frames, or for a non-positive video_fps/fps.
    """
    if nframes is not None:
        n = round_by_factor(nframes, FRAME_FACTOR)
    else:
        if video_fps <= 0 or fps <= 0:
            raise ValueError(f"smart_nframes: video_fps and fps must be positive, got {video_fps}, {fps}")
        lo = ceil_by_factor(min_frames, FRAME_FACTOR)
        hi = floor_by_factor(min(max_frames, total_frames), FRAME_FACTOR)
        n = total_frames / video_fps * fps
        n = floor_by_factor(min(max(n, lo), hi, total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"smart_nframes: need {FRAME_FACTOR} <= nframes <= total_frames, got nframes={n}, "
                         f"total_frames={total_frames}")
    return n


def sample_frame_indices(total_frames: int, n: int) -> list[int]:
    """Uniform frame indices including first and last, the official arithmetic exactly (notes §8):
    torch.linspace(0, total_frames - 1, n) in float32, torch.round (ties to even), to int.

    float32 matters on long clips: float64 linspace gives other indices from e.g. 64 frames of a
    135,435-frame clip or 128 frames of a 66,771-frame one (tests/test_bad_media.py).
    Returns: list of n ints in [0, total_frames - 1], non-decreasing (frame indices, 0-based).
    Raises ValueError if n < 1 or total_frames < 1. Example: (491, 16) -> [0, 33, 65, 98, ..., 457, 490]."""
    if n < 1 or total_frames < 1:
        raise ValueError(f"sample_frame_indices: need n >= 1 and total_frames >= 1, got {n}, {total_frames}")
    return torch.linspace(0, total_frames - 1, n, dtype=torch.float32).round().long().tolist()


def effective_video_max_pixels(n_frames: int, min_pixels: int = VIDEO_MIN_PIXELS,
                               max_pixels: int = VIDEO_MAX_PIXELS, total_pixels: int = VIDEO_TOTAL_PIXELS) -> float:
    """Per-frame pixel cap of the official fetch_video: max(min(max_pixels, total_pixels / T * 2),
    int(min_pixels * 1.05)) (notes §8). With the shipped constants it is 105369, not 100352, so
    video frames come out at e.g. 224x420 = 94080 pixels, below min_pixels (notes §9 item 13)."""
    return max(min(max_pixels, total_pixels / n_frames * FRAME_FACTOR), int(min_pixels * 1.05))


# ---- pixels ---------------------------------------------------------------------------------------
def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(D3) Bicubic antialiased resize of all frames at once, like torchvision resize on a uint8 tensor.

    Args: frames uint8 (or float 0-255) (T, C, H, W); target height, width in pixels.
    Returns: uint8 (T, C, height, width): interpolate in float32 (align_corners=False, antialias=True),
    then round, clamp to [0, 255] and cast (notes §8 fetch_video)."""
    if frames.shape[-2:] == (height, width):
        return frames.round().clamp(0, 255).to(torch.uint8) if frames.is_floating_point() else frames.to(torch.uint8)
    x = frames.float()  # (T, C, H, W)
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)  # (T, C, height, width)


class Clip(NamedTuple):
    """A decoded, resized video: frames uint8 (T, 3, H, W); sample_fps in frames per second of the
    sampled clip (T / total_frames * video_fps); indices the decoded frame indices (length T)."""

    frames: torch.Tensor
    sample_fps: float
    indices: list[int]


def read_video(path, *, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES, max_frames: int = FPS_MAX_FRAMES,
               nframes: int | None = None, min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
               total_pixels: int = VIDEO_TOTAL_PIXELS) -> Clip:
    """Decode, sample and resize a video as the official qwen_vl_utils decord path does (notes §8).

    T = smart_nframes(len(vr), vr.get_avg_fps(), ...); indices = sample_frame_indices; size =
    smart_resize(h, w, 28, min_pixels, effective_video_max_pixels(T, ...)); resize_frames.
    Defaults are the shipped training values (16 frames at 2 fps, 128*28*28 pixels per frame);
    evaluation passes e.g. max_pixels=200704, nframes=32. decord runs with num_threads=1 (same output as
    more threads, measured equally fast here, and safe inside data-loader workers).
    Returns: Clip(frames uint8 (T, 3, H, W) with H, W multiples of 28, sample_fps float, indices).
    Raises:
        MediaError: the message starts with the path and says what is wrong, for a missing, empty or
            undecodable file, and for a file the frame/size rules reject: fewer than 2 frames, fewer frames
            than a fixed ``nframes``, aspect ratio above 200, or a side that the pixel budget shrinks to 0
            (smart_nframes/smart_resize's ValueError is the cause).
        ValueError: settings that no file can satisfy: nframes rounding below 2, fps <= 0 without nframes.
    """
    import decord  # imported here so that text-only users of this module do not need it

    path = os.fspath(path)
    if nframes is not None and round_by_factor(nframes, FRAME_FACTOR) < FRAME_FACTOR:
        raise ValueError(f"read_video: nframes must round to at least {FRAME_FACTOR}, got {nframes}")
    if nframes is None and not fps > 0:
        raise ValueError(f"read_video: fps must be positive, got {fps}")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: cannot read video: FileNotFoundError: no such file")
    try:
        vr = decord.VideoReader(path, num_threads=1)
        total_frames, video_fps = len(vr), float(vr.get_avg_fps())
    except Exception as e:  # decord raises RuntimeError/DECORDError with ffmpeg's message
        raise MediaError(f"{path}: cannot open video: {type(e).__name__}: {str(e)[:300]}") from e
    if total_frames < 1 or not video_fps > 0:
        raise MediaError(f"{path}: unusable video: {total_frames} frames at {video_fps} fps")
    try:
        n = smart_nframes(total_frames, video_fps, fps, min_frames, max_frames, nframes)
    except ValueError as e:  # too few frames for the rule: the official code raises too (then swallows it)
        raise MediaError(f"{path}: unusable video: too few frames ({total_frames} at {video_fps:g} fps): {e}") from e
    indices = sample_frame_indices(total_frames, n)
    try:
        array = vr.get_batch(indices).asnumpy()  # (T, H, W, 3) uint8
    except Exception as e:
        raise MediaError(f"{path}: cannot decode frames {indices}: {type(e).__name__}: {str(e)[:300]}") from e
    frames = torch.from_numpy(array).permute(0, 3, 1, 2)  # (T, 3, H, W)
    height, width = frames.shape[-2:]
    cap = effective_video_max_pixels(n, min_pixels, max_pixels, total_pixels)
    try:
        h, w = smart_resize(height, width, IMAGE_FACTOR, min_pixels, cap)
    except ValueError as e:  # aspect ratio > 200, or a side shrunk to 0 by the pixel budget
        raise MediaError(f"{path}: unusable video frame size {height}x{width}: {e}") from e
    frames = resize_frames(frames.contiguous(), h, w)  # (T, 3, h, w) uint8
    return Clip(frames, n / total_frames * video_fps, indices)


def read_image(path, *, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS) -> torch.Tensor:
    """(D4) Load an image as the official fetch_image does (notes §8).

    Images with an alpha channel (RGBA, LA, PA, or P/L/RGB with a transparency key) are composited onto
    white; everything else is converted to RGB. Resized to smart_resize(h, w, 28, min_pixels, max_pixels)
    with Pillow bicubic. Only the first frame of an animated file is used.
    Returns: uint8 (1, 3, H, W), H and W multiples of 28.
    Raises: MediaError, the message starting with the path, for a missing or undecodable file and for an
    image smart_resize rejects (aspect ratio above 200, a side shrunk to 0 by max_pixels; its ValueError is
    the cause).
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = img.convert("RGB")
    except Exception as e:  # FileNotFoundError, PIL.UnidentifiedImageError, OSError (truncated), ...
        raise MediaError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    try:
        h, w = smart_resize(rgb.height, rgb.width, IMAGE_FACTOR, min_pixels, max_pixels)
    except ValueError as e:  # aspect ratio > 200, or a side shrunk to 0 by the pixel budget
        raise MediaError(f"{path}: unusable image size {rgb.height}x{rgb.width}: {e}") from e
    if (h, w) != (rgb.height, rgb.width):
        rgb = rgb.resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8


def shuffle_frames(frames: torch.Tensor, generator: torch.Generator | None = None):
    """One uniform permutation of the whole frame axis (notes §1 step 4: frames are not kept in
    their temporal-patch pairs; the patchifier then pairs consecutive shuffled frames).

    Args: frames (T, ...) any dtype; generator for torch.randperm (None: the global torch RNG).
    Returns: (frames[perm] (T, ...), perm int64 (T,)). Raises ValueError for a 0-d tensor."""
    if frames.dim() == 0:
        raise ValueError("shuffle_frames: frames must have a frame axis, got a 0-d tensor")
    perm = torch.randperm(frames.shape[0], generator=generator)  # (T,) int64
    return frames[perm], perm


def patchify(frames: torch.Tensor, temporal_patch_size: int = 2, patch_size: int = 14, merge_size: int = 2,
             mean=CLIP_MEAN, std=CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames -> the flat patch sequence of the Qwen2-VL image/video processor.

    Args:
        frames: (T, 3, H, W) uint8 or float with values 0-255; H, W multiples of patch_size * merge_size.
            An image is T = 1.
    Returns:
        pixel_values float32 (t*h*w, 3*temporal_patch_size*patch_size**2) — `pixel_values_videos` for a
        video — and grid_thw int64 (3,) = (t, h, w) with t = ceil(T / temporal_patch_size),
        h = H / patch_size, w = W / patch_size. The LLM sees t*h*w / merge_size**2 vision tokens.
    Steps (as Hugging Face's Qwen2-VL processors): x/255, (x - mean)/std per channel; pad T to a multiple
    of temporal_patch_size by repeating the last frame (an image becomes 2 identical frames); rows
    ordered (t, h/m, w/m, m_h, m_w) so every merge_size x merge_size window is contiguous; each row is
    ordered (channel, frame in tubelet, patch row, patch column).
    Raises: ValueError for a wrong rank, channel count, empty T, or H, W not multiples of the factor.
    """
    if frames.dim() != 4 or frames.shape[1] != len(mean) or frames.shape[0] == 0:
        raise ValueError(f"patchify: expected frames (T>0, {len(mean)}, H, W), got {tuple(frames.shape)}")
    T, C, H, W = frames.shape
    factor = patch_size * merge_size
    if H % factor or W % factor:
        raise ValueError(f"patchify: H and W must be multiples of {factor}, got {H}x{W}")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, C, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, C, 1, 1)
    x = (frames.float() * (1 / 255) - mean_t) / std_t  # (T, C, H, W) float32
    if pad := -T % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])  # (T_padded, C, H, W)
    t, h, w, m, p = x.shape[0] // temporal_patch_size, H // patch_size, W // patch_size, merge_size, patch_size
    x = x.reshape(t, temporal_patch_size, C, h // m, m, p, w // m, m, p)
    # (t, tp, C, hb, mh, ph, wb, mw, pw) -> (t, hb, wb, mh, mw, C, tp, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(t * h * w, C * temporal_patch_size * p * p).contiguous()  # (t*h*w, C*tp*p*p)
    return pixel_values, torch.tensor([t, h, w], dtype=torch.int64)
