"""Tests for curves.py: hand-written metrics.jsonl files of a T-GRPO-like and an SFT-like run give a
decodable PNG with the panels their keys support; bad lines and missing files fail with the file
(and line) named; the CLI prints the path it wrote."""
import json
import math
import subprocess
import sys

import pytest
from PIL import Image

import curves
from conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TGRPO_PANELS = ["reward terms", "accuracy: ordered vs shuffled frames",
                "temporal-bonus trigger rate", "KL to reference", "completion length", "loss",
                "grad norm"]
SFT_PANELS = ["loss", "grad norm", "eval: format / accuracy"]


def tgrpo_rows(n=30):
    """Rows shaped like train.py's step_metrics; every third step has no video group (no p,
    p_shuffled, ...)."""
    rows = []
    for s in range(1, n + 1):
        acc = 0.2 + 0.6 * s / n + 0.05 * math.sin(s)
        row = {"step": s, "loss": 0.01 * math.cos(s), "accuracy": acc,
               "format": min(1.0, 0.5 + s / n), "reward": 1.5 * acc + 0.3, "reward_std": 0.4,
               "temporal_bonus": 0.1 * acc, "length_bonus": 0.05, "completion_length": 120 - s,
               "zero_std_groups": 0.25, "kl": 0.001 * s, "clip_frac": 0.0, "ratio_min": 1.0,
               "ratio_mean": 1.0, "ratio_max": 1.0, "skipped_media": 0, "lr": 1e-6 * (1 - s / n),
               "grad_norm": 0.5 + 0.1 * math.sin(s), "step_time": 2.0}
        if s % 3:
            row |= {"p": acc, "p_shuffled": acc - 0.1, "temporal_rate": 0.6,
                    "bonus_adv_shift": 0.02}
        rows.append(row)
    return rows


def sft_rows(n=20, every=5):
    """Rows shaped like sft.py's: one per step, plus an evaluation row at step 0, every `every`
    steps and at the end."""
    rows = []
    for s in range(0, n + 1):
        if s:
            rows.append({"step": s, "epoch": s / n, "loss": 3.0 / s, "lr": 1e-5, "tokens": 900,
                         "grad_norm": 1.0, "skipped_media": 0, "step_time": 0.5})
        if s % every == 0:
            rows.append({"step": s, "eval_format": s / n, "eval_accuracy": 0.5 * s / n,
                         "eval_length": 80.0, "eval_n": 16})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_png(path, min_w=600, min_h=250):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.load()
        w, h = im.size
    assert min_w <= w <= 4000 and min_h <= h <= 3000, (w, h)
    assert not list(path.parent.glob("*.tmp"))               # the temp file was renamed away
    return w, h


def test_tgrpo_run_draws_all_rl_panels(tmp_path):
    m = write(tmp_path / "metrics.jsonl", tgrpo_rows())
    out = curves.draw(m, title="tgrpo")
    assert out == tmp_path / "curves.png"
    w, h = check_png(out)
    assert h > 400                                           # 7 panels: two rows of four


def test_sft_run_draws_loss_and_eval(tmp_path):
    m = write(tmp_path / "metrics.jsonl", sft_rows())
    out = curves.draw(m, tmp_path / "sft.png")
    assert out == tmp_path / "sft.png" and not (tmp_path / "curves.png").exists()
    check_png(out)


def test_panels_follow_keys(tmp_path):
    keys = lambda rows: set().union(*rows)
    assert curves.panels(keys(tgrpo_rows())) == TGRPO_PANELS
    assert curves.panels(keys(sft_rows())) == SFT_PANELS
    assert curves.panels({"step", "loss"}) == ["loss"]
    assert curves.panels({"step", "lr"}) == []
    # a GRPO run without shuffled groups logs no p / p_shuffled / temporal_rate: those panels are
    # left out
    plain = [{k: v for k, v in r.items() if k not in ("p", "p_shuffled", "temporal_rate")}
             for r in tgrpo_rows()]
    assert curves.panels(keys(plain)) == [t for t in TGRPO_PANELS if t not in TGRPO_PANELS[1:3]]
    check_png(curves.draw(write(tmp_path / "metrics.jsonl", plain)))


def test_one_row_and_nonfinite_values(tmp_path):
    rows = [{"step": 1, "loss": 0.5, "kl": float("nan")}]  # json.dumps writes NaN, json.loads reads
                                                           # it back
    check_png(curves.draw(write(tmp_path / "metrics.jsonl", rows)), min_w=200)


def test_moving_average():
    y = curves.np.array([1.0, 2.0, 3.0, 4.0])
    assert curves.moving_average(y, 1).tolist() == y.tolist()
    assert curves.moving_average(y, 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_bad_line_names_file_and_line(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 1, "loss": 1.0}\n\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3: not JSON"):
        curves.draw(m)
    m.write_text('{"step": 1, "loss": 1.0}\n{"loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2: no \"step\""):
        curves.draw(m)
    m.write_text('{"step": 1, "lr": 1.0}\n')
    with pytest.raises(ValueError, match="no metric to draw"):
        curves.draw(m)
    assert not (tmp_path / "curves.png").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        curves.draw(tmp_path / "nothere.jsonl")


def test_cli_prints_path_and_imports_no_torchvision(tmp_path):
    m = write(tmp_path / "metrics.jsonl", tgrpo_rows(1000))
    r = subprocess.run([sys.executable, "curves.py", str(m), "--out", str(tmp_path / "x.png")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "x.png")
    check_png(tmp_path / "x.png")
    code = "import sys, curves; curves.draw(sys.argv[1]); assert 'torchvision' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code, str(m)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
