"""A newcomer's next hour: an exported folder keeps its settings, a run never joins another, and
wrong input stops early with one line. Subprocess runs are tiny (1 step, G = 2, no held-out
evaluation)."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import checkpoint
import common
from builtin import cache, coldstart
import config as cfglib
import curves
import distributed
import preflight
import report
from conftest import ROOT, run_cmd

QUICK = ["--preset", "tiny", "--G", "2", "--max-completion-length", "6", "--prompts-per-rank", "1",
         "--eval-samples", "0", "--steps", "1"]


def train(builtin, out, *args):
    return [sys.executable, str(ROOT / "train.py"), "--model", str(builtin[1]), "--data",
            str(builtin[0]["train"]), "--out-dir", str(out), "--cache-dir",
            str(out.parent / "cache"), *QUICK, *args]


def one_line_error(proc, *words):
    """The process ended as a user error: exit code 2, stderr a single line `error: ...` with
    `words`."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


def test_export_records_settings_and_a_fresh_run_never_reuses_the_out_dir(builtin, tmp_path):
    """final/ holds run_settings.json (preset, frames/pixels, sampling, run id, as the
    checkpoint's); a second fresh run into the same --out-dir is refused before any model loads,
    naming what is there and leaving it; --overwrite clears it first, saying what goes, and the new
    run has a new identity."""
    out = tmp_path / "out"
    run_cmd(train(builtin, out, "--save-every", "1"), tmp_path)
    record = json.loads((out / "final" / preflight.SETTINGS).read_text())
    assert record["preset"] == "tiny" and record["media"]["max_frames"] == 8
    assert record["sampling"]["max_completion_length"] == 6 and record["sampling"]["top_p"] == 0.95
    run_id = json.loads((out / "config.json").read_text())["run_id"]
    assert record["run_id"] == run_id == checkpoint.run_of(out / "checkpoints" / "step_000001")
    before = (out / "final" / "model.safetensors").stat().st_mtime_ns

    proc = run_cmd(train(builtin, out), tmp_path, ok=False)
    one_line_error(proc, "holds another run (checkpoints, final, metrics.jsonl)", "--resume auto",
                   "--overwrite")
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == before

    proc = run_cmd(train(builtin, out, "--overwrite"), tmp_path)
    assert (f"--overwrite: removing {out / 'checkpoints'}, {out / 'final'}, "
            f"{out / 'metrics.jsonl'}" in proc.stdout)
    assert not (out / "checkpoints").exists()
    assert json.loads(
        (out / "final" / preflight.SETTINGS).read_text())["run_id"] not in (None, run_id)


def test_resume_auto_refuses_a_checkpoint_of_another_run(tmp_path):
    """A newest checkpoint written by run aaa in a folder whose config.json is run bbb's is refused
    by --resume auto before anything loads; the same run's goes on to load (here: fails in DCP, no
    state)."""
    ck = tmp_path / "checkpoints" / "step_000009"
    ck.mkdir(parents=True)
    (ck / ".metadata").write_bytes(b"")
    torch.save({"step": 9, "config": {"run_id": "aaa"}}, ck / "rank00000.pt")
    (tmp_path / "config.json").write_text(json.dumps({"run_id": "bbb"}))
    with pytest.raises(cfglib.UserError, match="step_000009 belongs to run aaa.*run bbb's"):
        checkpoint.resume("auto", tmp_path, None, None, distributed.Dist(), {}, False, {},
                          "train.py")
    (tmp_path / "config.json").write_text(json.dumps({"run_id": "aaa"}))
    checkpoint.check_same_run(ck, tmp_path, "train.py")                # the same run: no objection


def test_preset_auto_takes_an_exported_folders_settings(tmp_path, capsys):
    """--preset auto on a folder with run_settings.json: its preset (the tiny one's lr, steps,
    template) and its recorded frames/pixels and sampling; a flag given instead wins and is named. A
    built-in cold start (its coldstart.json) is tiny; any other folder paper."""
    import eval as ev
    import train as tr
    folder = tmp_path / "final"
    folder.mkdir()
    run_config = {"preset": "tiny", "run_id": "abc", "max_frames": 6, "video_max_pixels": 5000,
                  "max_completion_length": 40, "top_p": 0.9, "lr": 1.0}
    preflight.write_settings(folder, run_config)
    cfg = tr.finish_config(*cfglib.parse(tr.Config, ["--model", str(folder), "--max-frames", "4"]))
    assert (cfg.preset == "tiny" and cfg.lr == common.TRAIN_TINY["lr"]
            and cfg.steps == common.TRAIN_TINY["steps"])
    assert ((cfg.max_frames, cfg.video_max_pixels, cfg.max_completion_length, cfg.top_p)
            == (4, 5000, 40, 0.9))
    assert "given instead: --max-frames 4 (the folder's: 6)" in capsys.readouterr().out
    cfg = ev.finish_config(*cfglib.parse(ev.Config, ["--model", str(folder)]))
    assert ((cfg.preset, cfg.template, cfg.max_frames, cfg.video_max_pixels)
            == ("tiny", "train", 6, 5000))
    assert cfg.top_p == 0.001                   # eval's decoding is its own: only media are taken
    cold, other = tmp_path / "cold", tmp_path / "other"
    cold.mkdir()
    other.mkdir()
    (cold / coldstart.RECORD).write_text("{}")
    assert tr.finish_config(*cfglib.parse(tr.Config, ["--model", str(cold)])).preset == "tiny"
    assert tr.finish_config(*cfglib.parse(tr.Config, ["--model", str(other)])).preset == "paper"


@pytest.mark.parametrize("script,args,words", [
    ("train.py", ["--steps", "0"], ["--steps must be >= 1, got 0"]),
    ("train.py", ["--G", "1"], ["--G must be >= 2", "group-relative"]),
    ("train.py", ["--model", "preset:tiny-qwen3"],
     ["unknown preset; known: preset:tiny-qwen3-vl", "preset:qwen2.5-vl-7b"]),
    ("eval.py", ["--model", "preset:qwen2.5-vl-7b"], ["without weights, for plan.py only"]),
    ("sft.py", ["--no-such-flag", "1"], ["unrecognized arguments: --no-such-flag"]),
    ("train.py", ["--model", "nowhere", "--data", "missing.json"], ["missing.json: no such file"]),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, script, args, words):
    proc = run_cmd([sys.executable, str(ROOT / script), *args, "--out-dir", str(tmp_path / "o")],
                   tmp_path, ok=False)
    one_line_error(proc, *words)


def test_plan_presets_stay_plan_only_and_variant_names_plain_grpo():
    import train as tr
    cfg = tr.finish_config(*cfglib.parse(tr.Config, ["--model", "preset:qwen2.5-vl-7b"]))
    assert cfg.preset == "paper"                      # read as flags; refused when a run loads it
    cfg = tr.finish_config(*cfglib.parse(tr.Config, ["--G-shuffled", "0"]))
    # no shuffled completions: no temporal reward
    assert tr.tgrpo_settings(cfg).name() == "GRPO[std]"
    assert tr.tgrpo_settings(tr.finish_config(*cfglib.parse(tr.Config, []))).name().startswith(
        "T-GRPO[")


def entries(builtin, n=3, kind="video"):
    return [e for e in json.loads(builtin[0]["train"].read_text()) if e["data_type"] == kind][:n]


def test_data_is_checked_before_any_model_loads(builtin, tmp_path):
    """--model names no folder at all, so each error below comes from the data check that runs
    first: all media missing, an image file for every video entry, a bad field; eval.py the same."""
    missing, wrong, bad = tmp_path / "missing.json", tmp_path / "wrong.json", tmp_path / "bad.json"
    missing.write_text(json.dumps([dict(e, path=f"./nowhere{i}.mp4")
                                   for i, e in enumerate(entries(builtin))]))
    for i in range(3):
        (tmp_path / f"frame{i}.png").write_bytes(b"png")
    wrong.write_text(json.dumps([dict(e, path=f"./frame{i}.png")
                                 for i, e in enumerate(entries(builtin))]))
    bad.write_text(json.dumps([dict(entries(builtin)[0], problem_type="mcq")]))
    base = [sys.executable, str(ROOT / "train.py"), "--model", str(tmp_path / "no_model"),
            "--out-dir", str(tmp_path / "o")]
    one_line_error(run_cmd(base + ["--data", str(missing)], tmp_path, ok=False),
                   "none of its 3 samples has readable media, resolved against the JSON folder",
                   "--media-root")
    one_line_error(run_cmd(base + ["--data", str(wrong)], tmp_path, ok=False),
                   "3 wrong type", "frame0.png")
    one_line_error(run_cmd(base + ["--data", str(bad)], tmp_path, ok=False),
                   "entry 0", "'problem_type'")
    proc = run_cmd([sys.executable, str(ROOT / "eval.py"), "--model", str(tmp_path / "no_model"),
                    "--data", str(missing), "--out-dir", str(tmp_path / "e")], tmp_path, ok=False)
    one_line_error(proc, "none of its 3 samples has readable media")


def test_all_media_corrupt_stops_after_one_pass(builtin, tmp_path):
    """Every clip exists and is garbage: the run stops after one pass over the data (not 1,001
    retries) with a one-line error that says unreadable, not --media-root."""
    rows = entries(builtin)
    for i, e in enumerate(rows):
        (tmp_path / f"bad{i}.mp4").write_bytes(np.random.default_rng(i).bytes(4000))
        e["path"] = f"./bad{i}.mp4"
    (tmp_path / "corrupt.json").write_text(json.dumps(rows))
    cmd = train(builtin, tmp_path / "out")
    cmd[cmd.index("--data") + 1] = str(tmp_path / "corrupt.json")
    proc = run_cmd(cmd, tmp_path, ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # decord's own lines aside
    [last] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert last.startswith("error: 4 unusable media files in a row: 0 missing, 4 unreadable"), last
    assert "--media-root" not in last and "Traceback" not in proc.stderr
    assert sum(".mp4" in l for l in proc.stderr.splitlines()) < 15     # a pass, not 1,001 retries


def test_eval_without_model_evaluates_the_cold_start(monkeypatch, tmp_path):
    import eval as ev
    monkeypatch.setattr(cache, "paths",
                        lambda cache, proc, model=True: {"test": tmp_path / "test.json"})
    monkeypatch.setattr(coldstart, "find_or_build",
                        lambda cache, proc: tmp_path / "coldstart" / "final")
    cfg = ev.finish_config(*cfglib.parse(ev.Config, []))
    model, benches = ev.resolve(cfg, distributed.Dist())
    assert (model == str(tmp_path / "coldstart" / "final")
            and benches == [("synthetic", str(tmp_path / "test.json"))])
    assert cfg.preset == "tiny" and cfg.template == "train"


def test_single_process_checkpoint_is_quiet(tmp_path):
    """DCP's "torch.distributed is disabled ... single process" UserWarning is not shown on a
    single-process save and load; the checkpoint still round-trips."""
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = torch.nn.Linear(2, 2)
    module = Wrapped()
    opt = torch.optim.AdamW(module.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = checkpoint.save(tmp_path, 1, module, opt, distributed.Dist(), {"x": 1})
        state = checkpoint.load(path, module, opt, distributed.Dist())
    assert state["x"] == 1
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)], caught


def test_results_table_names_the_run_and_help_keeps_line_breaks():
    assert report.model_label("/x/runs/tgrpo/final") == "tgrpo-final"
    assert report.model_label("/x/runs/tgrpo/step_20") == "tgrpo-step_20"
    assert report.model_label("/m/Video-R1-7B") == "Video-R1-7B"
    media = {"nframes": 0, "max_frames": 8, "fps": 2.0, "min_frames": 4, "video_min_pixels": 1,
             "video_max_pixels": 2, "image_min_pixels": 3, "image_max_pixels": 4,
             "rope_time": "sample"}
    sampling = {"temperature": 0.01, "top_p": 0.001, "top_k": 0, "repetition_penalty": 1.0,
                "max_new_tokens": 64}
    r = {"benchmark": "synthetic", "variant": "ordered", "model": "/x/runs/tgrpo/final",
         "settings": {"media": media, "sampling": sampling},
         "summary": {"score": 50.0, "n_scored": 2, "n_excluded": 0, "by_category": {}}}
    assert "| tgrpo-final | ≤8 | ordered |" in report.report([r])
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True,
                          text=True)
    lines = proc.stdout.splitlines()
    assert any(l.rstrip().endswith("--media-root Video-R1-data \\") for l in lines)   # its own line
    assert any(l.lstrip().startswith("--lora-rank 64 --lora-alpha 128") for l in lines)
    assert any("--eval-samples 0" in l for l in lines) and "paper's" in proc.stdout


def test_curves_point_out_shrinking_completions(tmp_path, capsys):
    rows = [{"step": i + 1, "completion_length": 30.0 - i, "loss": 0.0} for i in range(15)]
    assert curves.shrink(rows) == (30.0, 16.0, 1)
    assert curves.shrink([dict(r, completion_length=30.0) for r in rows]) is None
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves.draw(path)
    assert "note: completion length shrank 30 -> 16 tokens" in capsys.readouterr().err
