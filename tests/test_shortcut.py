"""The static-shortcut benchmark (shortcut.py): which splits follow the cue, which reverse it, the
training share q, balanced answers, the schema, and that the built-in dataset's draw is untouched by
the cue option."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
from builtin import scenes
from builtin import shortcut
from conftest import ROOT

N_TRAIN, N_TEST = 40, 16


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return shortcut.make_shortcut_dataset(tmp_path_factory.mktemp("shortcut"), q=0.8,
                                          n_train=N_TRAIN, n_test=N_TEST)


def colour_and_answer(entry):
    """The moving shape's colour as the question names it, and the answer's words ("bigger",
    "left")."""
    colour = re.search(r"the (\w+) (?:circle|square|triangle)", entry["problem"]).group(1)
    letter = re.fullmatch(r"<answer>(.)</answer>", entry["solution"]).group(1)
    return colour, dict(o.split(". ", 1) for o in entry["options"])[letter]


def palette_of(family, colour):
    return next(a for a, cols in scenes.CUES[family].items() if colour in cols)


def test_cue_follows_reverses_or_is_absent_by_split(bench):
    for split, rule in (("test_following", "follow"), ("test_reversed", "reverse"),
                        ("test_free", "free")):
        entries = json.loads(bench[split].read_text())
        assert len(entries) == N_TEST and all(e["cue"] == rule for e in entries)
        for e in entries:
            family = e["data_source"].split("/")[-1]
            assert family in scenes.CUES
            colour, answer = colour_and_answer(e)
            if rule == "follow":
                assert palette_of(family, colour) == answer, e
            elif rule == "reverse":
                assert palette_of(family, colour) != answer, e
        words = [colour_and_answer(e)[1] for e in entries]
        assert (words.count("bigger") == words.count("smaller")
                and words.count("left") == words.count("right"))
    free = [colour_and_answer(e)[0] for e in json.loads(bench["test_free"].read_text())]
    assert len(set(free)) >= 4                                                # not one palette
    static = json.loads(bench["test_static"].read_text())
    assert (len(static) == N_TEST
            and {e["data_source"].split("/")[-1] for e in static} == set(scenes.STATIC_FAMILIES))


def test_training_split_follows_the_cue_in_share_q(bench):
    entries = json.loads(bench["train"].read_text())
    cued = [e for e in entries if e["data_source"].split("/")[-1] in scenes.CUES]
    assert len(entries) == N_TRAIN and len(cued) == N_TRAIN // 2
    follows = [palette_of(e["data_source"].split("/")[-1], colour_and_answer(e)[0])
               == colour_and_answer(e)[1]
               for e in cued]
    assert sum(follows) == round(0.8 * len(cued)) == 16                 # 16 of 20 follow, 4 reverse
    assert [e["cue"] for e in cued].count("follow") == 16


def test_splits_load_as_video_r1_samples_and_files_exist(bench):
    for split in shortcut.SPLITS:
        samples = data.load_samples(bench[split])
        assert samples and all(s.data_type == "video" and Path(s.media_path).exists()
                               for s in samples)
    paths = [e["path"] for s in shortcut.SPLITS for e in json.loads(bench[s].read_text())]
    assert len(set(paths)) == len(paths)                                   # every clip its own file


def test_without_a_cue_the_scene_draw_is_unchanged():
    """cue=None must consume the random stream exactly as before (the built-in dataset stays
    byte-identical); the cue only replaces the colour draw."""
    plain = scenes.scene("size_change", np.random.default_rng(5), 8, 112, "bigger", "video")
    again = scenes.scene("size_change", np.random.default_rng(5), 8, 112, "bigger", "video", None)
    assert plain[1:] == again[1:] and plain[0] == again[0]
    with pytest.raises(KeyError, match="no static cue"):
        scenes.scene("color", np.random.default_rng(0), 8, 112, "red", "video", "follow")
    with pytest.raises(ValueError, match="cue must be"):
        scenes.scene("direction", np.random.default_rng(0), 8, 112, "left", "video", "sideways")


def test_bad_arguments_and_the_command(tmp_path):
    with pytest.raises(ValueError, match="q must be in"):
        shortcut.make_shortcut_dataset(tmp_path / "x", q=1.5)
    out = subprocess.run([sys.executable, str(ROOT / "builtin" / "shortcut.py"), "--out",
                          str(tmp_path / "cli"), "--q", "1.0", "--n-train", "8", "--n-test", "4"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test_reversed" in out.stdout
    cued = [e for e in json.loads((tmp_path / "cli" / "train.json").read_text())
            if e["cue"] != "none"]
    assert cued and all(e["cue"] == "follow" for e in cued)              # q = 1: a perfect shortcut
    manifest = (tmp_path / "cli" / "manifest.json").read_text()
    again = subprocess.run([sys.executable, str(ROOT / "builtin" / "shortcut.py"), "--out",
                            str(tmp_path / "cli"), "--q", "1.0", "--n-train", "8", "--n-test", "4"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "cli" / "manifest.json").read_text() == manifest
