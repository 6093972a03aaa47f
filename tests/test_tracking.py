"""Experiment tracking (tracking.py): the TensorBoard event files and the offline wandb run, read
back, hold the metrics.jsonl rows under their namespaces, rank 0 only; sft.py (with LoRA) and
eval.py report too."""
import json
import os
import struct
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tracking
from conftest import ROOT, run_cmd, run_train


def _tensorboard(folder):
    """{tag: [(step, value)]} and the text entries of the one event file under `folder`."""
    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1, files                                  # one writer: rank 0 only
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    texts = {t: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)]
             for t in acc.Tags()["tensors"]}
    return scalars, texts


def _wandb_records(path):
    """The protobuf records of an offline run file (run-ID.wandb). The file is a LevelDB-style log:
    a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records, each with a 7-byte
    header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last piece); a block's tail shorter
    than a header is zero padding."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, pos, piece = path.read_bytes(), 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:                                   # zero padding to the block end
            pos += left
            continue
        piece += raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(piece)
            piece = b""
            yield record


def test_namespaces_and_backends():
    got = tracking.namespaced({"step": 3, "accuracy": 0.5, "p_shuffled": 0.2, "kl": 0.01,
                               "step_time": 1.5, "eval_format": 1.0, "name": "x", "flag": True})
    assert got == {"reward/accuracy": 0.5, "temporal/p_shuffled": 0.2, "policy/kl": 0.01,
                   "perf/step_time": 1.5, "eval/format": 1.0}
    assert (tracking.parse_backends("none") == []
            and tracking.parse_backends("wandb, tensorboard") == ["wandb", "tensorboard"])
    with pytest.raises(ValueError, match="unknown backend 'mlflow'"):
        tracking.parse_backends("tensorboard,mlflow")


def test_train_reports_to_tensorboard_and_offline_wandb_on_rank_0(tmp_path, builtin, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_NAME", "t1")                     # wandb's own variable names the run
    proc = run_train(["--steps", "2", "--G", "2", "--max-completion-length", "8",
                      "--prompts-per-rank", "1", "--report-to", "tensorboard,wandb"],
                     tmp_path, nproc=2, builtin=builtin)
    out = tmp_path / "out"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    scalars, texts = _tensorboard(out / "tensorboard")
    for name, tag in [("accuracy", "reward/accuracy"), ("format", "reward/format"),
                      ("p_shuffled", "temporal/p_shuffled"),
                      ("temporal_rate", "temporal/temporal_rate"), ("kl", "policy/kl"),
                      ("grad_norm", "policy/grad_norm"),
                      ("completion_length", "policy/completion_length"),
                      ("step_time", "perf/step_time")]:
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([r[name] for r in rows], rel=1e-6), tag
    # the full run config
    assert json.loads(texts["config/text_summary"][0].strip("`\n"))["G"] == 2
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1                                          # rank 0 only, offline
    records = list(_wandb_records(runs[0]))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    assert [h["_step"] for h in history] == [1, 2]
    assert [h["reward/accuracy"] for h in history] == pytest.approx([r["accuracy"] for r in rows])
    assert [h["policy/kl"] for h in history] == pytest.approx([r["kl"] for r in rows])
    run = next(r.run for r in records if r.HasField("run"))
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["G"] == 2 and config["world_size"] == 2 and run.display_name == "t1"
    assert "wandb sync" in proc.stdout


def test_sft_with_lora_and_eval_report_to_tensorboard(tmp_path, builtin):
    paths, tiny = builtin
    out = tmp_path / "sft"
    run_cmd([sys.executable, str(ROOT / "sft.py"), "--model", str(tiny), "--data",
             str(paths["train_perception"]), "--eval-data", str(paths["test"]), "--preset", "tiny",
             "--steps", "3", "--eval-samples", "2",
             "--eval-max-new-tokens", "8", "--lora-rank", "4",
             "--report-to", "tensorboard", "--out-dir", str(out)], tmp_path)
    scalars, _ = _tensorboard(out / "tensorboard")
    assert [s for s, _ in scalars["policy/loss"]] == [1, 2, 3]
    assert [s for s, _ in scalars["eval/format"]] == [0, 3]
    assert ((out / "final" / "config.json").exists()
            and (out / "final_lora" / "adapter_config.json").exists())
    ev = tmp_path / "eval"
    run_cmd([sys.executable, str(ROOT / "eval.py"), "--model", str(out / "final"), "--data",
             str(paths["test"]), "--preset", "tiny", "--limit", "2", "--max-new-tokens", "8",
             "--report-to", "tensorboard", "--out-dir", str(ev)], tmp_path)
    result = json.loads((ev / "eval_test.json").read_text())["summary"]
    scalars, _ = _tensorboard(ev / "tensorboard")
    assert scalars["eval/test/score"] == [(0, pytest.approx(result["score"]))]
    assert scalars["eval/test/n_scored"] == [(0, result["n_scored"])]


def test_unknown_backend_is_refused_before_the_run(tmp_path):
    proc = run_cmd([sys.executable, str(ROOT / "train.py"), "--report-to", "mlflow", "--out-dir",
                    str(tmp_path)], tmp_path, ok=False)
    assert proc.returncode != 0 and "unknown backend 'mlflow'" in proc.stderr
    assert not os.listdir(tmp_path)


def test_train_final_evaluation_and_a_resume_reach_tensorboard_once_per_step(tmp_path, builtin):
    """The held-out evaluation after the last step reaches TensorBoard (the trackers closed before
    it once), and a run resumed from its step-2 checkpoint after logging step 3 (as a crash during
    step 4 leaves it) holds one point per step: the resumed writer purges the crashed run's points
    after the checkpoint."""
    quick = ["--G", "2", "--max-completion-length", "8", "--prompts-per-rank", "1", "--report-to",
             "tensorboard"]
    run_train(quick + ["--steps", "2", "--eval-samples", "2", "--eval-data",
                       str(builtin[0]["test"])], tmp_path, builtin=builtin)
    scalars, _ = _tensorboard(tmp_path / "out" / "tensorboard")
    assert [s for s, _ in scalars["eval/accuracy"]] == [0, 2]
    resumed = tmp_path / "resumed"
    run_train(quick + ["--steps", "3", "--save-every", "2", "--out-dir", str(resumed)], tmp_path,
              builtin=builtin)
    run_train(quick + ["--steps", "4", "--save-every", "2", "--resume", "auto", "--out-dir",
                       str(resumed)], tmp_path, builtin=builtin)
    acc = EventAccumulator(str(resumed / "tensorboard"))           # the folder: both runs' files
    acc.Reload()
    rows = [json.loads(l) for l in (resumed / "metrics.jsonl").read_text().splitlines()]
    got = [(e.step, e.value) for e in acc.Scalars("reward/accuracy")]
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx([r["accuracy"] for r in rows], rel=1e-6)


def test_wandb_resume_sends_each_step_once(tmp_path, monkeypatch):
    """wandb: a run resumed from step 2 after the crashed run sent steps 1-3 does not send step 3
    again (offline wandb cannot rewind; TensorBoard's purge is tested above), so the offline run
    files hold one point per step; an evaluation row at a step the resumed run logs still
    arrives."""
    from types import SimpleNamespace
    import tracking
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = SimpleNamespace(report_to="wandb")
    t = tracking.Tracker(cfg, tmp_path, {"a": 1})
    for s in (1, 2, 3):
        t.log({"step": s, "accuracy": float(s)})
    t.close()
    # wandb 0.31 names an offline run's folder by the second it starts; a run of the same id
    # begun in that same second goes to <folder>-1 and at times records nothing there (1 pair in
    # 20 here, with or without our code). A real resume starts minutes later: start the next second.
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    t = tracking.Tracker(cfg, tmp_path, {"a": 1}, start_step=2)
    for row in ({"step": 3, "accuracy": 30.0}, {"step": 4, "accuracy": 40.0},
                {"step": 4, "eval_accuracy": 0.5}):
        t.log(row)
    t.close()
    points = []
    for f in sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")):
        for r in _wandb_records(f):
            if r.HasField("history"):
                h = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in r.history.item}
                points += [(h["_step"], k, v) for k, v in h.items() if not k.startswith("_")]
    assert sorted(points) == [(1, "reward/accuracy", 1.0), (2, "reward/accuracy", 2.0),
                              (3, "reward/accuracy", 3.0), (4, "eval/accuracy", 0.5),
                              (4, "reward/accuracy", 40.0)]
