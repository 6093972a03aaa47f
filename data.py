"""Samples and prompt text: the Video-R1 JSON schema and the question templates (frames and pixels:
pixels.py).

    load_samples(json)   -> [Sample]                       notes §5 (schema)
    build_prompt_text(s) -> str                            notes §5 (templates, verbatim)

Bad input fails at load with the file, the entry index, the problem_id and the field (D5).
"""

import json
import os
from dataclasses import dataclass, field


import torch

from config import UserError
from rewards import PROBLEM_TYPES

# ---- samples (notes §5) ----------------------------------------------------------------------
@dataclass
class Sample:
    """One Video-R1 entry (Video-R1-260k, Video-R1-COT-165k or Video-R1-eval schema, notes §5).

    ``entry`` and ``source`` say where it came from (0-based entry index, the JSON file);
    load_samples sets them, a Sample built by hand has -1 and "". They are provenance, not content:
    == ignores them."""

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
    # 0-based index of the entry in `source`; -1: unknown
    entry: int = field(default=-1, compare=False)
    source: str = field(default="", compare=False)  # the JSON / JSON Lines file it was read from


class MissingFile(UserError, FileNotFoundError):
    """A data file that does not exist: a config.UserError, also a FileNotFoundError."""


def _read_entries(json_path: str) -> list:
    """Entries of a JSON list file, or of a JSON Lines file (``.jsonl``, blank lines skipped).
    Raises FileNotFoundError (MissingFile); UserError (a ValueError) naming the file for text that
    is not UTF-8 (with the byte offset), invalid JSON (with the line for .jsonl), a non-list top
    level, or no entries at all."""
    if not os.path.isfile(json_path):
        raise MissingFile(f"{json_path}: no such file")
    with open(json_path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{json_path}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset "
                        f"{e.start}: {e.reason}") from e
    if json_path.endswith(".jsonl"):
        entries = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{json_path}: line {line_no}: invalid JSON: {e}") from e
        if not entries:
            raise UserError(f"{json_path}: no entries (an empty JSON Lines file)")
        return entries
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{json_path}: invalid JSON: {e}") from e
    if not isinstance(entries, list):
        raise UserError(f"{json_path}: expected a JSON list of entries, got "
                        f"{type(entries).__name__}")
    if not entries:
        raise UserError(f"{json_path}: no entries (an empty JSON list)")
    return entries


def load_samples(json_path, media_root=None, require_process: bool = False) -> list[Sample]:
    """(D1, D5) Read and validate a Video-R1 JSON list (or ``.jsonl``) into Samples (notes §5
    schema).

    Args:
        json_path: path of the file. ``.jsonl`` means one JSON object per line; anything else a
            JSON list.
        media_root: folder that entry paths are relative to; default: the JSON file's folder.
        require_process: demand a non-empty ``process`` string (the COT-165k file, for SFT).
    Returns:
        list of Sample, in file order, never empty; Sample.entry is the 0-based entry index and
        Sample.source the file (json_path as given). Media files are NOT checked here (that happens
        at decode time).
    Raises:
        FileNotFoundError: the file does not exist (MissingFile, also a config.UserError).
        config.UserError (a ValueError): text that is not UTF-8 (names the file and the byte
            offset), bad JSON, no entries
            ("no entries"), or a bad entry; the message names the file, the 0-based entry index,
            the problem_id when there is one, and the field, e.g.
            "train.json: entry 17 (problem_id 42): field 'problem_type': unknown value 'mcq'; ...".
    Required: problem_id (int or str), problem, data_type, problem_type, solution, path (non-empty),
    and options (a non-empty list of strings) for multiple choice. For other types options may be
    absent or null (-> []). data_source and process are optional strings (null -> ""). Unknown keys
    are ignored.
    """
    json_path = os.fspath(json_path)
    root = os.path.abspath(os.path.dirname(json_path) if media_root is None
                           else os.fspath(media_root))
    samples = []
    for i, e in enumerate(_read_entries(json_path)):
        if not isinstance(e, dict):
            raise UserError(f"{json_path}: entry {i}: expected a JSON object, got "
                            f"{type(e).__name__}")
        pid = e.get("problem_id")
        where = f"{json_path}: entry {i}" + ("" if pid is None else f" (problem_id {pid})")

        def bad(field, msg):
            return UserError(f"{where}: field '{field}': {msg}")

        def get(field, types, default=None, required=True):
            if field not in e or e[field] is None:
                if required:
                    raise bad(field, "missing")
                return default
            v = e[field]
            if not isinstance(v, types) or isinstance(v, bool):
                names = " or ".join(t.__name__
                                    for t in (types if isinstance(types, tuple) else (types,)))
                raise bad(field, f"expected {names}, got {type(v).__name__} {v!r:.60}")
            return v

        problem_id = get("problem_id", (int, str))
        problem = get("problem", str)
        data_type = get("data_type", str)
        if data_type not in ("image", "video"):
            raise bad("data_type", f"unknown value {data_type!r}; expected 'image' or 'video'")
        problem_type = get("problem_type", str)
        if problem_type not in PROBLEM_TYPES:
            raise bad("problem_type",
                      f"unknown value {problem_type!r}; expected one of {PROBLEM_TYPES}")
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
    "Engage in an internal dialogue using expressions such as "
    "'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, "
    "and then give your final answer between the <answer> </answer> tags."
)
QUESTION_TEMPLATE_EVAL = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as "
    "'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, "
    "and then give your final answer between the <answer> and </answer> tags."
)
TYPE_TEMPLATE = {
    "multiple choice": (" Please provide only the single option letter (e.g., A, B, C, D, etc.) "
                        "within the <answer> </answer> tags."),
    "numerical": (" Please provide the numerical value (e.g., 42 or 3.14) "
                  "within the <answer> </answer> tags."),
    "OCR": (" Please transcribe text from the image/video clearly "
            "and provide your text answer within the <answer> </answer> tags."),
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": (" Please provide the numerical value (e.g., 42 or 3.14) "
                   "within the <answer> </answer> tags."),
}


def build_question(sample: Sample) -> str:
    """The question text (notes §5): for multiple choice, problem + "Options:\\n" + one option per
    line (no separator between problem and "Options:", as official); otherwise the problem
    unchanged."""
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
        raise ValueError(f"build_prompt_text: problem {sample.problem_id}: "
                         f"unknown problem_type {sample.problem_type!r}")
    template = QUESTION_TEMPLATE if variant == "train" else QUESTION_TEMPLATE_EVAL
    return template.format(Question=build_question(sample)) + TYPE_TEMPLATE[sample.problem_type]


# ---- the chat-rendered prompt (notes §5 "GRPO message"): -----------------------------------------
# the text above, in Qwen2.5-VL's chat layout
PAD_TOKEN = {"image": "<|image_pad|>", "video": "<|video_pad|>"}
DEFAULT_SYSTEM = "You are a helpful assistant."
THINK_OPEN = "<think>\n"  # what a reasoning template may put after "<|im_start|>assistant\n" (Q4)


def render_prompt(tokenizer, text: str, data_type: str, system: str | None = None) -> str:
    """The chat-rendered prompt text with ONE pad token for the media (notes §5 "GRPO message").

    No system message by default, so the template inserts "You are a helpful assistant.". A
    generation prompt ending in THINK_OPEN loses it (Q4). data_type None: the same turn without the
    media (a blind baseline, blind.py). Raises ValueError for a data_type other than
    "image"/"video"/None.
    """
    if data_type is not None and data_type not in PAD_TOKEN:
        raise ValueError(f"data_type must be 'image', 'video' or None, got {data_type!r}")
    media = [] if data_type is None else [{"type": data_type}]
    messages = [{"role": "user", "content": media + [{"type": "text", "text": text}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Q4: a template that opens the assistant turn with "<think>\n" (a Thinking checkpoint's) would
    # leave the completion without its own <think>, and rewards.format_reward would fail every one:
    # the Video-R1 prompt asks the model to write the tags, so the opened tag is taken back off the
    # prompt.
    return rendered[:-len(THINK_OPEN)] if rendered.endswith(THINK_OPEN) else rendered


def expand_media_tokens(rendered: str, data_type: str, grid_thw, merge_size: int = 2,
                        timestamps=None) -> str:
    """Replace the single `<|video_pad|>`/`<|image_pad|>` of a rendered prompt by t*h*w/merge²
    copies, as the Qwen2.5-VL processor does. With `timestamps` (Qwen3-VL videos: one time in
    seconds per temporal patch, pixels.patch_times), the template's whole
    `<|vision_start|><|video_pad|><|vision_end|>` becomes, per temporal patch, `<{time:.1f}
    seconds><|vision_start|>` + h*w/merge² pads + `<|vision_end|>` (qwen3_vl.py; the official 4.57
    processor's layout, Q2). grid_thw: (3,) ints.
    Raises ValueError if the text has not exactly one pad (with timestamps: one start-pad-end
    triple), or when the number of timestamps differs from t."""
    pad = PAD_TOKEN[data_type]
    t, h, w = (int(x) for x in grid_thw)
    if timestamps is not None:
        block = "<|vision_start|>" + pad + "<|vision_end|>"
        if rendered.count(block) != 1 or rendered.count(pad) != 1:
            raise ValueError(f"expected exactly one {block} in the rendered prompt, "
                             f"found {rendered.count(block)}")
        if len(timestamps) != t:
            raise ValueError(f"{len(timestamps)} timestamps for {t} temporal patches")
        frame = "<|vision_start|>" + pad * (h * w // merge_size**2) + "<|vision_end|>"
        return rendered.replace(block, "".join(f"<{x:.1f} seconds>" + frame for x in timestamps))
    if rendered.count(pad) != 1:
        raise ValueError(f"expected exactly one {pad} in the rendered prompt, "
                         f"found {rendered.count(pad)}")
    return rendered.replace(pad, pad * (t * h * w // merge_size**2))


def encode_prompt(tokenizer, text: str, data_type: str, grid_thw, merge_size: int = 2,
                  system: str | None = None, timestamps=None):
    """Token ids of the chat-rendered prompt with its media pad tokens expanded
    (`expand_media_tokens`: t*h*w/merge² pads; Qwen3-VL videos, given `timestamps`: one timestamped
    block per temporal patch).

    Args: text: the templated question (data.build_prompt_text); data_type: "image" | "video";
    grid_thw: (3,) LongTensor or ints (t, h, w) from pixels.patchify; timestamps: Visual.timestamps
    or None. data_type None: the prompt without media (no media tokens; grid_thw ignored). Returns
    LongTensor (P,). Raises ValueError as expand_media_tokens. Reference §1 step 3, §5.
    """
    full = render_prompt(tokenizer, text, data_type, system)
    if data_type is not None:
        full = expand_media_tokens(full, data_type, grid_thw, merge_size, timestamps)
    return torch.tensor(tokenizer(full, add_special_tokens=False)["input_ids"], dtype=torch.long)
