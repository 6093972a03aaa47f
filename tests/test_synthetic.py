"""Tests for synthetic.py: schema, determinism, idempotence, and that the pixels of the decoded
clips really carry the (order-dependent) answers written in the JSON."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from builtin import scenes
from builtin.scenes import COLORS
from builtin.synthetic import make_dataset

FIELDS = {"problem_id": int, "problem": str, "data_type": str, "problem_type": str, "options": list,
          "solution": str, "path": str, "data_source": str}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    paths = make_dataset(root, seed=0, n_train=48, n_test=8)
    train, cot, test = (json.loads(paths[k].read_text()) for k in ("train", "train_cot", "test"))
    return paths, train, cot, test


def decode(root: Path, entry: dict) -> np.ndarray:
    """All frames of the entry's clip, (T, H, W, 3) uint8, read with decord."""
    vr = decord.VideoReader(str(root / entry["path"][2:]))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def color_mask(frames: np.ndarray, name: str) -> np.ndarray:
    """(..., H, W) bool: pixels within 40 RGB units of the named palette colour."""
    diff = frames.astype(np.int32) - np.array(COLORS[name])
    return (diff ** 2).sum(-1) < 40 ** 2


def present(frame: np.ndarray, name: str) -> bool:
    return int(color_mask(frame, name).sum()) >= 8


def answer_text(entry: dict) -> str:
    """The text of the correct MC option (without its "X. " prefix)."""
    letter = re.fullmatch(r"<answer>(.*)</answer>", entry["solution"]).group(1)
    return next(o[3:] for o in entry["options"] if o.startswith(letter + ". "))


def family(entries, name):
    return [e for e in entries if e["data_source"].endswith("/" + name)
            and e["data_type"] == "video"]


def test_files_and_schema(data):
    paths, train, cot, test = data
    for key in ("train", "train_cot", "test"):
        assert paths[key].is_file()
    assert (paths["root"] / "manifest.json").is_file()
    assert len(train) == len(cot) == 48 and len(test) == 8
    for entries in (train, cot, test):
        assert sorted(e["problem_id"] for e in entries) == list(range(len(entries)))
        for e in entries:
            for field, typ in FIELDS.items():
                assert isinstance(e[field], typ), (e["problem_id"], field)
            assert e["data_type"] in ("video", "image")
            assert e["path"].startswith("./") and (paths["root"] / e["path"][2:]).is_file()
            assert e["path"].endswith(".mp4" if e["data_type"] == "video" else ".png")
            assert re.fullmatch(r"synthetic/(temporal|static)/\w+", e["data_source"])
            assert "Options" not in e["problem"]
            inner = re.fullmatch(r"<answer>(.+)</answer>", e["solution"]).group(1)
            if e["problem_type"] == "multiple choice":
                letters = [o[0] for o in e["options"]]
                assert letters == list("ABCDEF"[: len(letters)]) and len(letters) >= 2
                assert all(re.fullmatch(r"[A-F]\. \S.*", o) for o in e["options"])
                assert len(set(o[3:] for o in e["options"])) == len(letters)
                assert inner in letters
            else:
                assert e["problem_type"] == "numerical" and e["options"] == []
                assert re.fullmatch(r"\d+", inner)
            if e["data_type"] == "image":
                assert e["data_source"].startswith("synthetic/static/")
    kinds = {(e["data_type"], e["problem_type"], e["data_source"].split("/")[1]) for e in train}
    assert {k[0] for k in kinds} == {"video", "image"}
    assert {k[1] for k in kinds} == {"multiple choice", "numerical"}
    assert {k[2] for k in kinds} == {"temporal", "static"}
    assert ({e["data_source"].split("/")[2] for e in train}
            == set(scenes.TEMPORAL_FAMILIES + scenes.STATIC_FAMILIES))


def test_balance(data):
    _, train, _, _ = data
    videos = [e for e in train if e["data_type"] == "video"]
    assert len([e for e in train if e["data_type"] == "image"]) == round(0.15 * 48)
    kinds = Counter(e["data_source"].split("/")[1] for e in videos)
    assert abs(kinds["temporal"] - kinds["static"]) <= 1
    for fam in scenes.TEMPORAL_FAMILIES + scenes.STATIC_FAMILIES:
        fam_entries = [e for e in train if e["data_source"].endswith("/" + fam)]
        values, n_opt = scenes.answers(fam)
        # no answer values: the first shape is the correct option, at either place
        if fam == "appear_first":
            assert set(Counter(e["solution"] for e in fam_entries)) == {"<answer>A</answer>",
                                                                        "<answer>B</answer>"}
            continue
        # balanced values
        answers = Counter(answer_text(e) if n_opt else e["solution"] for e in fam_entries)
        assert set(answers) == ({str(v) for v in values} if n_opt
                                else {f"<answer>{v}</answer>" for v in values}), fam
        assert max(answers.values()) - min(answers.values()) <= 1, (fam, answers)


def test_options_in_fixed_order(data):
    """Every MC question lists its options in its family's fixed order (synthetic module
    docstring)."""
    _, train, _, test = data
    for e in train + test:
        if e["options"]:
            texts = [o[3:] for o in e["options"]]
            assert texts == sorted(texts, key=scenes._option_rank), e
            if e["data_source"].endswith(("/direction", "/size_change")):
                assert texts in (["left", "right"], ["bigger", "smaller"])
            if e["data_source"].endswith("/shape"):
                assert texts == list(scenes.SHAPES)


def test_count_before_law_is_time_symmetric():
    # k uniform on {0,1,2} times P(m | k) must give P(k, m) = P(m, k): a clip and its reverse
    # equally likely.
    joint = np.zeros((3, 3))
    for k, (ms, ps) in scenes._M_GIVEN_K.items():
        assert abs(sum(ps) - 1) < 1e-12
        for m, p in zip(ms, ps):
            joint[k, m] = p / 3
    np.testing.assert_allclose(joint, joint.T)
    np.testing.assert_allclose(joint.sum(1), [1 / 3] * 3)
    # every total k + m leaves at least two possible answers, so the frame multiset cannot decide
    for total in range(1, 4):
        assert len([k for k in range(3) if 0 <= total - k <= 2 and joint[k, total - k] > 0]) >= 2


def test_clips_decode_with_right_shape(data):
    paths, train, _, test = data
    for e in train + test:
        if e["data_type"] == "video":
            vr = decord.VideoReader(str(paths["root"] / e["path"][2:]))
            assert len(vr) == 8 and abs(vr.get_avg_fps() - 2.0) < 1e-6
            assert vr[0].asnumpy().shape == (112, 112, 3)
        else:
            img = Image.open(paths["root"] / e["path"][2:])
            assert img.size == (112, 112) and img.mode == "RGB"


def test_direction_pixels(data):
    paths, train, _, test = data
    clips = family(train + test, "direction")
    assert clips
    for e in clips:
        color = re.fullmatch(r"In which direction does the (\w+) (\w+) move\?",
                             e["problem"]).group(1)
        frames = decode(paths["root"], e)

        def moves(fr):
            xs = [np.nonzero(color_mask(f, color))[1].mean() for f in (fr[0], fr[-1])]
            assert abs(xs[1] - xs[0]) > 0.3 * 112
            return "right" if xs[1] > xs[0] else "left"

        assert moves(frames) == answer_text(e)
        # same frames, reversed order: the other answer
        assert moves(frames[::-1]) != answer_text(e)


def test_appear_first_pixels(data):
    paths, train, _, test = data
    clips = family(train + test, "appear_first")
    assert clips
    for e in clips:
        colors = [re.fullmatch(r"[AB]\. the (\w+) \w+", o).group(1) for o in e["options"]]
        frames = decode(paths["root"], e)
        first = {c: min(t for t, f in enumerate(frames) if present(f, c)) for c in colors}
        rev = {c: min(t for t, f in enumerate(frames[::-1]) if present(f, c)) for c in colors}
        winner = answer_text(e).split()[1]
        loser = next(c for c in colors if c != winner)
        assert first[winner] < first[loser]
        assert rev[loser] < rev[winner]  # reversed clip: the other shape appears first


def test_size_change_pixels(data):
    paths, train, _, test = data
    clips = family(train + test, "size_change")
    assert clips
    for e in clips:
        color = re.fullmatch(r"Does the (\w+) \w+ get bigger or smaller\?", e["problem"]).group(1)
        area = color_mask(decode(paths["root"], e), color).sum((1, 2))  # (T,)
        grows = area[-1] > area[0]
        assert max(area[-1], area[0]) > 4 * min(area[-1], area[0])
        # monotone (pixel steps)
        assert np.all(np.diff(area) >= 0) if grows else np.all(np.diff(area) <= 0)
        assert ("bigger" if grows else "smaller") == answer_text(e)


def test_count_before_pixels(data):
    paths, train, _, test = data
    clips = family(train + test, "count_before")
    assert clips
    order_matters = 0
    for e in clips:
        m = re.fullmatch(r"How many times does the small (\w+) square flash before the (\w+) "
                         r"circle appears\?", e["problem"])
        square, circle = m.groups()
        frames = decode(paths["root"], e)
        flash = [present(f, square) for f in frames]
        marker = [present(f, circle) for f in frames]
        assert sum(marker) == 1 and not any(a and b for a, b in zip(flash, flash[1:]))
        k = sum(flash[: marker.index(True)])
        assert str(k) == re.fullmatch(r"<answer>(\d+)</answer>", e["solution"]).group(1)
        order_matters += sum(flash) - k != k  # the reversed clip would have a different answer
    assert order_matters > 0


def test_static_pixels(data):
    paths, train, _, test = data
    for e in train + test:
        if not e["data_source"].startswith("synthetic/static/"):
            continue
        if e["data_type"] == "video":
            frames = decode(paths["root"], e)
        else:
            frames = np.asarray(Image.open(paths["root"] / e["path"][2:]))[None]
        for f in (frames[0], frames[-1]):  # any single frame answers a static question
            seen = [c for c in COLORS if present(f, c)]
            fam = e["data_source"].split("/")[2]
            if fam == "count":
                assert str(len(seen)) == e["solution"][8:-9]
            elif fam == "color":
                assert seen == [answer_text(e)]
            else:
                # the shape is the only non-background blob; look 1 px inside its bounding box's
                # corners: a square covers all four, a triangle (apex up) the two bottom ones, a
                # circle none
                mask = np.abs(f.astype(np.int32)
                              - np.median(f.reshape(-1, 3), 0)).sum(-1) > 60  # (H, W)
                ys, xs = np.nonzero(mask)
                box = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
                # TL, TR, BL, BR
                corners = tuple(bool(v) for v in box[[1, 1, -2, -2], [1, -2, 1, -2]])
                shape = {(True,) * 4: "square", (False, False, True, True): "triangle",
                         (False,) * 4: "circle"}[corners]
                assert shape == answer_text(e)


def test_cot_process(data):
    _, train, cot, _ = data
    for e, c in zip(train, cot):
        assert {k: v for k, v in c.items() if k != "process"} == e
        assert re.fullmatch(r"<think>.*</think>", c["process"], re.DOTALL)
        inner = re.fullmatch(r"<answer>(.*)</answer>", e["solution"]).group(1)
        assert c["process"].endswith(f"The answer is {inner}.</think>")
        fam = e["data_source"].split("/")[2]
        if fam == "direction":
            assert f"so it moves to the {answer_text(e)}." in c["process"]
        elif fam == "size_change":
            assert f"It gets {answer_text(e)} over time." in c["process"]
        elif fam == "appear_first":
            assert f"So {answer_text(e)} appears first." in c["process"]
        elif fam == "count_before":
            assert f"flashed {inner} time" in c["process"]
        elif fam == "count":
            assert f"That makes {inner} shape" in c["process"]
        else:
            assert answer_text(e) in c["process"]


def test_determinism(tmp_path):
    a = make_dataset(tmp_path / "a", seed=3, n_train=24, n_test=8)
    b = make_dataset(tmp_path / "b", seed=3, n_train=24, n_test=8)
    c = make_dataset(tmp_path / "c", seed=4, n_train=24, n_test=8)
    for key in ("train", "train_cot", "test"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()
    train = json.loads(a["train"].read_text())
    clip = next(e for e in train if e["data_type"] == "video")
    np.testing.assert_array_equal(decode(a["root"], clip), decode(b["root"], clip))
    test_clip = next(e for e in json.loads(a["test"].read_text()) if e["data_type"] == "video")
    assert test_clip["path"].startswith("./videos/test_")


def test_idempotent_and_redo(tmp_path):
    paths = make_dataset(tmp_path, seed=0, n_train=12, n_test=4)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: os.stat(p).st_mtime_ns for p in files}
    assert make_dataset(tmp_path, seed=0, n_train=12, n_test=4) == paths
    assert {p: os.stat(p).st_mtime_ns for p in files} == stamps
    # a missing file (an interrupted or damaged run) makes the next call render again
    victim = tmp_path / json.loads(paths["train"].read_text())[0]["path"][2:]
    victim.unlink()
    make_dataset(tmp_path, seed=0, n_train=12, n_test=4)
    assert victim.is_file()
    # other parameters: rendered again, and the manifest records them
    make_dataset(tmp_path, seed=0, n_train=10, n_test=4)
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["n_train"] == 10
    assert len(json.loads(paths["train"].read_text())) == 10


@pytest.mark.parametrize("kwargs", [{"size": 100}, {"frames": 4}, {"seed": -1},
                                    {"image_fraction": 1.0}, {"n_train": 0}, {"fps": 0.0}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError, match="synthetic.make_dataset"):
        make_dataset(tmp_path, **{"n_train": 4, "n_test": 2, **kwargs})


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "builtin" / "synthetic.py"), "--out",
                          str(tmp_path / "d"), "--n-train", "6", "--n-test", "2", "--seed", "1"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert str(tmp_path / "d") in out.stdout and "train.json" in out.stdout
    assert len(json.loads((tmp_path / "d" / "train.json").read_text())) == 6


def test_stated_answer_reads_every_cot(data):
    """scenes.stated_answer finds, in every built-in reasoning, the answer in the COT's words (the
    option text for multiple choice, the number otherwise), and None in a text without the stating
    sentence."""
    _, _, cot, _ = data
    for e in cot:
        fam = e["data_source"].split("/")[-1]
        truth = (answer_text(e) if e["options"]
                 else re.fullmatch(r"<answer>(.*)</answer>", e["solution"]).group(1))
        assert scenes.stated_answer(fam, e["process"] + "\n<answer>X</answer>") == truth, e
    assert scenes.stated_answer("size_change",
                                "<think>It is big.</think><answer>A</answer>") is None
    # the reasoning counts, not the answer after </think>
    assert scenes.stated_answer(
        "direction", "<think>so it moves to the left.</think> moves to the right") == "left"


def test_perception_split_answers_with_the_right_words(data):
    """The perception split (D8): 9 x n_train samples on clips of their own, the same schema and
    questions, and a reasoning that is only the right answer's words: the option text for multiple
    choice, the number otherwise."""
    paths, train, _, _ = data
    per = json.loads(paths["train_perception"].read_text())
    assert len(per) == 9 * 48
    assert not {e["path"] for e in per} & {e["path"] for e in train}
    for e in per:
        assert set(FIELDS) <= set(e) and (paths["root"] / e["path"][2:]).exists()
        letter = re.fullmatch(r"<answer>(.+)</answer>", e["solution"]).group(1)
        words = dict(o.split(". ", 1) for o in e["options"]).get(letter, letter)
        assert e["process"] == f"<think>{words}</think>", e
    families = {e["data_source"].split("/")[-1] for e in per}
    assert families == set(scenes.TEMPORAL_FAMILIES) | set(scenes.STATIC_FAMILIES)


def test_stated_answer_reads_the_conclusion_then_the_leading_words():
    """The COT's concluding sentence wins; without one, the words the reasoning starts with, when
    they have the family's form; otherwise None."""
    say = scenes.stated_answer
    assert say("size_change", "<think>smaller. Let me think. It gets bigger over time. "
                              "The answer is A.</think>") == "bigger"
    assert say("size_change", "<think>bigger</think>\n<answer>A</answer>") == "bigger"
    assert say("appear_first",
               "<think>the red circle</think><answer>A</answer>") == "the red circle"
    assert say("count", "<think>3. Let me count.</think>") == "3"
    assert say("direction", "<think>Let me think</think>") is None          # not the family's form
    assert say("count", "<think>three</think>") is None
    assert say("color", "no reasoning") is None
