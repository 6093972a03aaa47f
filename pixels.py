"""Frames and pixels: frame sampling and resizing, decoding, shuffling, patchify -- one sample's
visual input.

Everything between a media file and the tensors the Qwen2.5-VL vision tower eats:

    read_video(path)     -> Clip(frames uint8 (T,3,H,W), sample_fps, indices, source_fps)   notes §8
    read_image(path)     -> uint8 (1,3,H,W)                notes §8 fetch_image
    shuffle_frames(f)    -> (f[perm], perm)                notes §1 step 4
    patchify(frames)     -> pixel_values (t*h*w, 3*2*p*p) float32, grid_thw (3,) int64 = (t, h, w)
    patch_times(times)   -> seconds per temporal patch (Qwen3-VL's prompt timestamps)
    load_visual(sample, media) -> Decoded(frames, sample_fps, frame_times, frame_indices);
    to_visual(...) -> Visual

The model family's constants (patch size 14 or 16, so a resize factor of 28 or 32; the
normalisation's mean and std; whether the prompt carries timestamps) are MediaConfig fields, filled
from the family module (qwen2_5_vl.MEDIA, qwen3_vl.MEDIA) by common.media_config; the defaults are
Qwen2.5-VL's.

Frame counts and sizes follow the official qwen_vl_utils 0.0.10 rules (notes §8) bit for bit: the
same rounding (Python round, ties to even), the same per-frame pixel budget, including its quirk
(notes §9 item 13). Resizing is torch bicubic with antialias on all frames at once, rounded back to
uint8, which is what torchvision's resize does on the uint8 tensor the official code feeds it (D3).
Media that cannot be used raise MediaError naming the path: undecodable files, and files the
frame/size rules reject (one frame, a clip shorter than a fixed nframes, aspect ratio above 200, a
side that the pixel budget shrinks to 0), which the official code also raises for and then swallows.
Callers skip and count such samples, never substitute other media (L2; notes §1 step 2 describes the
official fallback).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import data

# ---- constants (notes §8, the shipped training values) ------------------------------------
IMAGE_FACTOR = 28  # patch_size 14 * merge_size 2
MAX_RATIO = 200
IMAGE_MIN_PIXELS = 4 * 28 * 28  # 3136
IMAGE_MAX_PIXELS = 256 * 28 * 28  # 200704
VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100352
VIDEO_MAX_PIXELS = 128 * 28 * 28  # 100352 (training)
EVAL_VIDEO_MAX_PIXELS = 256 * 28 * 28  # 200704 (the official eval edits VIDEO_MAX_PIXELS to this)
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # 90316800
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, used by the Qwen2-VL processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MediaError(RuntimeError):
    """A media file that cannot be read, decoded or used (too few frames, too elongated, ...); the
    message starts with the path."""



@dataclass
class MediaConfig:
    """Frames and pixels, per run (notes §4 "Frames and pixels", §8). Defaults: the official
    training values."""
    fps: float = FPS  # sampling rate of the fps rule (frames per second of video)
    min_frames: int = FPS_MIN_FRAMES
    max_frames: int = FPS_MAX_FRAMES
    nframes: int = 0                      # > 0: a fixed frame count instead of the fps rule
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_total_pixels: int = VIDEO_TOTAL_PIXELS
    image_min_pixels: int = IMAGE_MIN_PIXELS
    image_max_pixels: int = IMAGE_MAX_PIXELS
    rope_time: str = "sample"  # L1, S5: "sample": the clip's real fps; "official": fixed 2 fps
    # the model family's (qwen2_5_vl.MEDIA / qwen3_vl.MEDIA): pixels per patch side
    patch_size: int = 14
    # vision_config.spatial_merge_size: frames resize to multiples of patch*merge
    merge_size: int = 2
    image_mean: tuple = CLIP_MEAN         # per-channel normalisation of pixels / 255
    image_std: tuple = CLIP_STD
    # Qwen3-VL: each video Visual carries its temporal patches' times (seconds)
    timestamps: bool = False


@dataclass
class Visual:
    """One prompt's visual input. pixel_values: float (n_patches, 3*2*p*p) for patch size p;
    grid_thw: long (3,); data_type "image" | "video"; second_per_grid: seconds per temporal grid
    (Qwen2.5-VL's mRoPE time axis, videos only); timestamps: Qwen3-VL videos only, one time in
    seconds per temporal patch (`patch_times`), else None."""
    data_type: str
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    second_per_grid: float = 1.0
    timestamps: tuple | None = None


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


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR,
                 min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: float = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) in pixels, both multiples of ``factor`` (qwen_vl_utils rule, notes
    §8).

    Round each side to the factor (at least one factor); if the area exceeds max_pixels, scale down
    by sqrt(h*w/max_pixels) and floor; else if below min_pixels, scale up and ceil. There is no
    second check, so a downscale can land below min_pixels (notes §9 item 13).
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
        raise ValueError(f"smart_resize: {height}x{width} with max_pixels {max_pixels} "
                         f"gives {h_bar}x{w_bar}")
    return h_bar, w_bar


def smart_nframes(total_frames: int, video_fps: float, fps: float = FPS,
                  min_frames: int = FPS_MIN_FRAMES, max_frames: int = FPS_MAX_FRAMES,
                  nframes: int | None = None) -> int:
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
            raise ValueError(f"smart_nframes: video_fps and fps must be positive, "
                             f"got {video_fps}, {fps}")
        lo = ceil_by_factor(min_frames, FRAME_FACTOR)
        hi = floor_by_factor(min(max_frames, total_frames), FRAME_FACTOR)
        n = total_frames / video_fps * fps
        n = floor_by_factor(min(max(n, lo), hi, total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"smart_nframes: need {FRAME_FACTOR} <= nframes <= total_frames, "
                         f"got nframes={n}, total_frames={total_frames}")
    return n


def sample_frame_indices(total_frames: int, n: int) -> list[int]:
    """Uniform frame indices including first and last, the official arithmetic exactly (notes §8):
    torch.linspace(0, total_frames - 1, n) in float32, torch.round (ties to even), to int.

    float32 matters on long clips: float64 linspace gives other indices from e.g. 64 frames of a
    135,435-frame clip or 128 frames of a 66,771-frame one (tests/test_bad_media.py).
    Returns: list of n ints in [0, total_frames - 1], non-decreasing (frame indices, 0-based).
    Raises ValueError if n < 1 or total_frames < 1. Example: (491, 16) -> [0, 33, 65, 98, ..., 457,
    490]."""
    if n < 1 or total_frames < 1:
        raise ValueError(f"sample_frame_indices: need n >= 1 and total_frames >= 1, "
                         f"got {n}, {total_frames}")
    return torch.linspace(0, total_frames - 1, n, dtype=torch.float32).round().long().tolist()


def effective_video_max_pixels(n_frames: int, min_pixels: int = VIDEO_MIN_PIXELS,
                               max_pixels: int = VIDEO_MAX_PIXELS,
                               total_pixels: int = VIDEO_TOTAL_PIXELS) -> float:
    """Per-frame pixel cap of the official fetch_video: max(min(max_pixels, total_pixels / T * 2),
    int(min_pixels * 1.05)) (notes §8). With the shipped constants it is 105369, not 100352, so
    video frames come out at e.g. 224x420 = 94080 pixels, below min_pixels (notes §9 item 13)."""
    return max(min(max_pixels, total_pixels / n_frames * FRAME_FACTOR), int(min_pixels * 1.05))


# ---- pixels --------------------------------------------------------------------------------------
def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(D3) Bicubic antialiased resize of all frames at once, like torchvision resize on a uint8
    tensor.

    Args: frames uint8 (or float 0-255) (T, C, H, W); target height, width in pixels.
    Returns: uint8 (T, C, height, width): interpolate in float32 (align_corners=False,
    antialias=True), then round, clamp to [0, 255] and cast (notes §8 fetch_video)."""
    if frames.shape[-2:] == (height, width):
        return (frames.round().clamp(0, 255).to(torch.uint8) if frames.is_floating_point()
                else frames.to(torch.uint8))
    x = frames.float()  # (T, C, H, W)
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)  # (T, C, height, width)


class Clip(NamedTuple):
    """A decoded, resized video: frames uint8 (T, 3, H, W); sample_fps in frames per second of the
    sampled clip (T / total_frames * video_fps); indices the decoded frame indices (length T);
    source_fps the file's own frame rate (frames per second), so frame i was shown at indices[i] /
    source_fps seconds."""

    frames: torch.Tensor
    sample_fps: float
    indices: list[int]
    source_fps: float = 0.0


def read_video(path, *, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES,
               max_frames: int = FPS_MAX_FRAMES, nframes: int | None = None,
               min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
               total_pixels: int = VIDEO_TOTAL_PIXELS, factor: int = IMAGE_FACTOR) -> Clip:
    """Decode, sample and resize a video as the official qwen_vl_utils decord path does (notes §8).

    T = smart_nframes(len(vr), vr.get_avg_fps(), ...); indices = sample_frame_indices; size =
    smart_resize(h, w, factor, min_pixels, effective_video_max_pixels(T, ...)); resize_frames.
    factor: patch size x merge size (28 for Qwen2.5-VL, 32 for Qwen3-VL).
    Defaults are the shipped training values (16 frames at 2 fps, 128*28*28 pixels per frame);
    evaluation passes e.g. max_pixels=200704, nframes=32. decord runs with num_threads=1 (same
    output as more threads, measured equally fast here, and safe inside data-loader workers).
    Returns: Clip(frames uint8 (T, 3, H, W) with H, W multiples of factor, sample_fps float,
    indices, source_fps).
    Raises:
        MediaError: the message starts with the path and says what is wrong, for a missing, empty or
            undecodable file, and for a file the frame/size rules reject: fewer than 2 frames, fewer
            frames than a fixed ``nframes``, aspect ratio above 200, or a side that the pixel budget
            shrinks to 0 (smart_nframes/smart_resize's ValueError is the cause).
        ValueError: settings that no file can satisfy: nframes rounding below 2, fps <= 0
            without nframes.
    """
    import decord  # imported here so that text-only users of this module do not need it
    decord.logging.set_level(decord.logging.QUIET)   # ffmpeg's stderr lines; MediaError says why

    path = os.fspath(path)
    if nframes is not None and round_by_factor(nframes, FRAME_FACTOR) < FRAME_FACTOR:
        raise ValueError(f"read_video: nframes must round to at least {FRAME_FACTOR}, "
                         f"got {nframes}")
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
    except ValueError as e:
        # too few frames for the rule: the official code raises too (then swallows it)
        raise MediaError(f"{path}: unusable video: too few frames "
                         f"({total_frames} at {video_fps:g} fps): {e}") from e
    indices = sample_frame_indices(total_frames, n)
    try:
        array = vr.get_batch(indices).asnumpy()  # (T, H, W, 3) uint8
    except Exception as e:
        raise MediaError(f"{path}: cannot decode frames {indices}: "
                         f"{type(e).__name__}: {str(e)[:300]}") from e
    frames = torch.from_numpy(array).permute(0, 3, 1, 2)  # (T, 3, H, W)
    height, width = frames.shape[-2:]
    cap = effective_video_max_pixels(n, min_pixels, max_pixels, total_pixels)
    try:
        h, w = smart_resize(height, width, factor, min_pixels, cap)
    except ValueError as e:  # aspect ratio > 200, or a side shrunk to 0 by the pixel budget
        raise MediaError(f"{path}: unusable video frame size {height}x{width}: {e}") from e
    frames = resize_frames(frames.contiguous(), h, w)  # (T, 3, h, w) uint8
    return Clip(frames, n / total_frames * video_fps, indices, video_fps)


def read_image(path, *, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS,
               factor: int = IMAGE_FACTOR) -> torch.Tensor:
    """(D4) Load an image as the official fetch_image does (notes §8).

    Images with an alpha channel (RGBA, LA, PA, or P/L/RGB with a transparency key) are composited
    onto white; everything else is converted to RGB. Resized to smart_resize(h, w, 28, min_pixels,
    max_pixels) with Pillow bicubic (factor: patch size x merge size, 28 or 32). Only the first
    frame of an animated file is used. Returns: uint8 (1, 3, H, W), H and W multiples of factor.
    Raises: MediaError, the message starting with the path, for a missing or undecodable file and
    for an image smart_resize rejects (aspect ratio above 200, a side shrunk to 0 by max_pixels; its
    ValueError is the cause).
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
    except Exception as e:
        # FileNotFoundError, PIL.UnidentifiedImageError, OSError (truncated), ...
        raise MediaError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    try:
        h, w = smart_resize(rgb.height, rgb.width, factor, min_pixels, max_pixels)
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


def patchify(frames: torch.Tensor, temporal_patch_size: int = 2, patch_size: int = 14,
             merge_size: int = 2, mean=CLIP_MEAN,
             std=CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames -> the flat patch sequence of the Qwen2-VL image/video processor.

    Args:
        frames: (T, 3, H, W) uint8 or float with values 0-255; H, W multiples of patch_size *
            merge_size. An image is T = 1.
    Returns:
        pixel_values float32 (t*h*w, 3*temporal_patch_size*patch_size**2) — `pixel_values_videos`
        for a video — and grid_thw int64 (3,) = (t, h, w) with t = ceil(T / temporal_patch_size),
        h = H / patch_size, w = W / patch_size. The LLM sees t*h*w / merge_size**2 vision tokens.
    Steps (as Hugging Face's Qwen2-VL processors): x/255, (x - mean)/std per channel; pad T to a
    multiple of temporal_patch_size by repeating the last frame (an image becomes 2 identical
    frames); rows ordered (t, h/m, w/m, m_h, m_w) so every merge_size x merge_size window is
    contiguous; each row is ordered (channel, frame in tubelet, patch row, patch column).
    Raises: ValueError for a wrong rank, channel count, empty T, or H, W not multiples of the
    factor.
    """
    if frames.dim() != 4 or frames.shape[1] != len(mean) or frames.shape[0] == 0:
        raise ValueError(f"patchify: expected frames (T>0, {len(mean)}, H, W), "
                         f"got {tuple(frames.shape)}")
    T, C, H, W = frames.shape
    factor = patch_size * merge_size
    if H % factor or W % factor:
        raise ValueError(f"patchify: H and W must be multiples of {factor}, got {H}x{W}")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, C, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, C, 1, 1)
    x = (frames.float() * (1 / 255) - mean_t) / std_t  # (T, C, H, W) float32
    if pad := -T % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])  # (T_padded, C, H, W)
    t, h, w, m, p = (x.shape[0] // temporal_patch_size, H // patch_size, W // patch_size,
                     merge_size, patch_size)
    x = x.reshape(t, temporal_patch_size, C, h // m, m, p, w // m, m, p)
    # (t, tp, C, hb, mh, ph, wb, mw, pw) -> (t, hb, wb, mh, mw, C, tp, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    # (t*h*w, C*tp*p*p)
    pixel_values = x.reshape(t * h * w, C * temporal_patch_size * p * p).contiguous()
    return pixel_values, torch.tensor([t, h, w], dtype=torch.int64)


# ---- one sample's visual input -------------------------------------------------------------------
def patch_times(frame_times, temporal_patch_size: int = 2) -> list[float]:
    """Seconds per temporal patch, as Qwen3-VL's processor computes its prompt timestamps: the frame
    times (seconds in the source: source frame index / source fps, one per sampled frame, in the
    order patchify pairs them) padded to a multiple of temporal_patch_size by repeating the last,
    then the mean of each patch's first and last time. E.g. source frames [0, 33, 66, 100, 133, 166,
    199, 232] at 30 fps give [0.55, 2.77, 4.98, 7.18] (printed 0.6 2.8 5.0 7.2). Raises ValueError
    for no frame times."""
    times = [float(x) for x in frame_times]
    if not times:
        raise ValueError("patch_times: no frame times")
    times += [times[-1]] * (-len(times) % temporal_patch_size)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2
            for i in range(0, len(times), temporal_patch_size)]


class Decoded(NamedTuple):
    """A sample's decoded media: frames uint8 (T, 3, H, W) (T = 1 for an image); sample_fps (frames
    per second of the sampled clip; 0 for images); frame_times: each frame's time in the source
    (seconds), () for images;
    frame_indices: each frame's index in the source file (0-based), () for images."""
    frames: torch.Tensor
    sample_fps: float
    frame_times: tuple = ()
    frame_indices: tuple = ()


def load_visual(sample, media: MediaConfig) -> Decoded:
    """Decode a sample's media at `media`'s frames and pixels (resize factor patch_size x
    merge_size).
    Raises MediaError for a missing or undecodable file."""
    factor = media.patch_size * media.merge_size
    if sample.data_type == "image":
        return Decoded(read_image(sample.media_path, min_pixels=media.image_min_pixels,
                                  max_pixels=media.image_max_pixels, factor=factor), 0.0)
    clip = read_video(sample.media_path, fps=media.fps, min_frames=media.min_frames,
                      max_frames=media.max_frames, nframes=media.nframes or None,
                      min_pixels=media.video_min_pixels, max_pixels=media.video_max_pixels,
                      total_pixels=media.video_total_pixels, factor=factor)
    return Decoded(clip.frames, clip.sample_fps, tuple(i / clip.source_fps for i in clip.indices),
                   tuple(int(i) for i in clip.indices))


def to_visual(frames: torch.Tensor, sample_fps: float, frame_times, data_type: str,
              media: MediaConfig, where: str = "") -> Visual:
    """Patchify frames (T, 3, H, W) into a Visual with `media`'s patch size, mean and std.
    second_per_grid = temporal_patch_size / fps: the clip's real fps with rope_time "sample", 2.0
    with "official" (notes §8 "What is passed to the model"). With media.timestamps (Qwen3-VL) a
    video also gets `patch_times(frame_times)`.
    Raises MediaError naming `where` (the media file) when a video needs timestamps and frame_times
    does not hold one source time per frame (a clip without its source fps and frame indices)."""
    # (t*h*w, 3*2*p*p), (3,)
    pixel_values, grid = patchify(frames, patch_size=media.patch_size, merge_size=media.merge_size,
                                  mean=media.image_mean, std=media.image_std)
    fps = 2.0 if media.rope_time == "official" or sample_fps <= 0 else sample_fps
    times = None
    if media.timestamps and data_type == "video":
        if len(frame_times) != frames.shape[0]:  # Q1: no default fps, refused
            raise MediaError(f"{where}: a Qwen3-VL prompt needs each frame's source time "
                             f"(source fps and frame indices): got {len(frame_times)} "
                             f"for {frames.shape[0]} frames")
        times = tuple(patch_times(frame_times))
    return Visual(data_type, pixel_values, grid, 2.0 / fps, times)


# ---- one sample prepared for the policy ----------------------------------------------------------
@dataclass
class Prepared:
    """One sample turned into policy inputs: prompt ids (P,) long and its Visual; for a video prompt
    that gets a shuffled group, the shuffled copy (same text, same token count, permuted frames,
    notes §1 step 4).
    For the rollout records (records.py): frames uint8 (T, 3, H, W) as sampled, their source times
    in seconds (index in the file / its fps; () for images), the shuffled copy's permutation perm
    (T,) long (shuffled frame j is frames[perm[j]]; None without a copy), and the frames' indices in
    the source file."""
    sample: data.Sample
    prompt_ids: torch.Tensor
    visual: Visual
    shuffled_ids: torch.Tensor | None = None
    shuffled_visual: Visual | None = None
    frames: torch.Tensor | None = None
    frame_times: tuple = ()
    perm: torch.Tensor | None = None
    frame_indices: tuple = ()


def prepare(sample: data.Sample, tokenizer, media: MediaConfig, shuffled: bool = False,
            variant: str = "train", generator: torch.Generator | None = None,
            cache=None) -> Prepared:
    """Sample -> Prepared, the one place a sample is prepared: decode media (or take them from
    `cache`, a loader.FrameCache: the same frames and times, bit for bit), patchify, render the chat
    prompt with t*h*w/m² pad tokens (Qwen3-VL: one timestamped block per temporal patch); with
    `shuffled` and a video, also the shuffled-frame copy (its permutation from `generator`). The
    shuffled copy keeps the ordered clip's timestamps and so the same prompt text (Q3): each frame's
    own time would let the model undo the shuffle.
    Raises MediaError for unreadable media."""
    frames, fps, times, indices = (cache.load(sample, media) if cache is not None
                                   else load_visual(sample, media))
    text = data.build_prompt_text(sample, variant)
    visual = to_visual(frames, fps, times, sample.data_type, media, sample.media_path)
    ids = data.encode_prompt(tokenizer, text, sample.data_type, visual.grid_thw, media.merge_size,
                             timestamps=visual.timestamps)
    out = Prepared(sample, ids, visual, frames=frames, frame_times=tuple(times),
                   frame_indices=tuple(indices))
    if shuffled and sample.data_type == "video":
        perm_frames, out.perm = shuffle_frames(frames, generator)
        # Q3: `times` are the ordered clip's frame times, so the shuffled copy carries the ordered
        # timestamps
        out.shuffled_visual = to_visual(perm_frames, fps, times, "video", media, sample.media_path)
        out.shuffled_ids = out.prompt_ids                                    # same text and grid
    return out
