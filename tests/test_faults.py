"""Faults never stop or corrupt a run: resumed metrics, atomic exports, a full disk, the wrong model
folder, a broken model in eval, changed settings on resume, and SIGTERM (a preempted job) on 1 and 2
ranks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import common
from conftest import ROOT, run_cmd as run

QUICK = ["--preset", "tiny", "--G", "2", "--max-completion-length", "6", "--prompts-per-rank", "1"]


def train_cmd(builtin, out, *args, nproc=1):
    paths, tiny = builtin
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                  "--standalone", f"--nproc_per_node={nproc}"]
    return launch + [str(ROOT / "train.py"), "--model", str(tiny), "--data", str(paths["train"]),
                     "--out-dir", str(out), *QUICK, *args]



def steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs: room for the tiny model's files,
    not for a checkpoint with its optimizer state."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_resumed_run_logs_one_row_per_step(builtin, tmp_path):
    """Steps 1-3 run, the last checkpoint is step 2 (as if killed during step 4); the resumed run
    re-runs step 3 and the metrics keep one row per step."""
    out = tmp_path / "out"
    run(train_cmd(builtin, out, "--steps", "3", "--save-every", "2"), tmp_path)
    assert steps(out) == [1, 2, 3]
    proc = run(train_cmd(builtin, out, "--steps", "4", "--save-every", "2", "--resume", "auto"),
               tmp_path)
    assert "at step 2" in proc.stdout
    assert steps(out) == [1, 2, 3, 4]


def test_export_is_atomic_and_a_full_disk_is_named(builtin, small_disk):
    """A full disk during an HF export leaves no partial folder (not weights without a tokenizer),
    names the folder and says "no space left"; an existing complete export survives a failed
    re-export."""
    from checkpoint import save_hf
    from model import load_policy
    hf, tok = load_policy(builtin[1])
    save_hf(hf, tok, small_disk / "final")                                     # ~11 MB: fits
    before = sorted(p.name for p in (small_disk / "final").iterdir())
    free = shutil.disk_usage(small_disk).free
    # leave 2 MiB: less than a model
    (small_disk / "filler").write_bytes(b"\0" * (free - 2 * 2**20))
    with pytest.raises(OSError, match="no space left on device") as e:
        save_hf(hf, tok, small_disk / "final")
    assert str(small_disk / "final") in str(e.value)
    # the old export is intact
    assert sorted(p.name for p in (small_disk / "final").iterdir()) == before
    assert not (small_disk / "final.tmp").exists() and not (small_disk / "final.old").exists()
    with pytest.raises(OSError, match="no space left on device"):
        save_hf(hf, tok, small_disk / "other")
    assert not (small_disk / "other").exists() and not (small_disk / "other.tmp").exists()


def test_full_disk_during_a_checkpoint_is_named(builtin, small_disk, tmp_path):
    proc = run(train_cmd(builtin, small_disk / "out", "--steps", "2", "--save-every", "1"),
               tmp_path, ok=False)
    assert proc.returncode != 0
    assert ("no space left on device" in proc.stderr
            and str(small_disk / "out" / "checkpoints") in proc.stderr)
    # the partial folder is removed
    assert not list((small_disk / "out" / "checkpoints").glob("*.tmp"))


def test_another_architecture_is_refused_before_building(builtin, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2,
                                                  "vocab_size": 100}))
    proc = run([sys.executable, str(ROOT / "train.py"), "--model", str(gpt2), "--data",
                str(builtin[0]["train"]), "--out-dir", str(tmp_path / "out"), "--steps", "1",
                *QUICK], tmp_path, ok=False)
    assert (proc.returncode != 0 and "model_type 'gpt2' is not supported" in proc.stderr
            and str(gpt2) in proc.stderr)
    assert "Loading weights" not in proc.stderr                                # nothing was built


def test_nonfinite_weights_are_named_at_load(builtin, tmp_path):
    from model import load_policy
    bad = tmp_path / "nan_model"
    shutil.copytree(builtin[1], bad)
    weights = load_file(bad / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError,
                       match=r"NaN or inf: model\.(language_model\.)?layers\.1\.mlp\."
                             r"up_proj\.weight"):

        load_policy(bad)


def test_eval_stops_on_a_broken_model_instead_of_scoring_zero(builtin, tmp_path):
    """A model folder without a chat template is not bad media: eval.py must exit non-zero,
    not report 0.0."""
    paths, tiny = builtin
    broken = tmp_path / "no_template"
    shutil.copytree(tiny, broken)
    for f in ("chat_template.json", "chat_template.jinja"):
        (broken / f).unlink(missing_ok=True)
    tc = json.loads((broken / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(tc))
    proc = run([sys.executable, str(ROOT / "eval.py"), "--model", str(broken), "--data",
                str(paths["test"]), "--limit", "2", "--preset", "tiny", "--max-new-tokens", "4",
                "--out-dir", str(tmp_path / "ev")],
               tmp_path, ok=False)
    assert proc.returncode != 0 and "chat template" in proc.stderr.lower()
    assert "scored" not in proc.stdout


def test_resume_with_other_settings_is_refused(builtin, tmp_path):
    out = tmp_path / "out"
    run(train_cmd(builtin, out, "--steps", "1", "--save-every", "1"), tmp_path)
    proc = run(train_cmd(builtin, out, "--steps", "2", "--resume", "auto", "--G", "4", "--lr",
                         "1e-3"), tmp_path, ok=False)
    assert proc.returncode != 0
    lr = common.TRAIN_TINY["lr"]  # the tiny preset's, as the first run had it
    assert ("G: 2 -> 4" in proc.stderr and f"lr: {lr} -> 0.001" in proc.stderr
            and "--allow-config-change" in proc.stderr)
    # the run's config was not overwritten
    assert json.loads((out / "config.json").read_text())["G"] == 2
    proc = run(train_cmd(builtin, out, "--steps", "2", "--resume", "auto", "--G", "4",
                         "--allow-config-change", "true"),
               tmp_path)
    assert "changed: G: 2 -> 4" in proc.stdout and steps(out) == [1, 2]


def test_resume_of_a_cosine_run_with_other_steps_is_refused(builtin, tmp_path):
    """--lr-schedule cosine decays over --steps, so resuming it with another --steps would change
    the learning rate of every remaining step: refused, naming the horizon. (A constant schedule may
    run longer: test_resumed_run_logs_one_row_per_step resumes a 3-step run to 4.)"""
    out = tmp_path / "out"
    run(train_cmd(builtin, out, "--steps", "1", "--save-every", "1", "--lr-schedule", "cosine"),
        tmp_path)
    proc = run(train_cmd(builtin, out, "--steps", "3", "--resume", "auto", "--lr-schedule",
                         "cosine"), tmp_path, ok=False)
    assert proc.returncode != 0 and "schedule_horizon: 1 -> 3" in proc.stderr


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_checkpoints_and_resumes_to_the_same_weights(builtin, tmp_path, nproc):
    """SIGTERM mid-run (to the process, or to torchrun, which forwards it): the current step
    finishes, every rank agrees, a checkpoint is written, the run exits with 143; resuming it gives
    the weights of an uninterrupted run."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    N = ["--steps", "6"]
    run(train_cmd(builtin, straight, *N, nproc=nproc), tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(train_cmd(builtin, stopped, *N, nproc=nproc), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while (not ((stopped / "metrics.jsonl").exists() and len(steps(stopped)) >= 2)
           and time.time() < deadline):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # during step 3 (or 4)
    out, err = proc.communicate(timeout=300)
    assert "SIGTERM: stopped after step" in out, out[-2000:] + err[-4000:]
    k = len(steps(stopped))
    assert 2 <= k < 6 and [p.name for p in (stopped / "checkpoints").iterdir()] == [f"step_{k:06d}"]
    assert not (stopped / "final").exists()
    if nproc == 1:
        assert proc.returncode == 143
    run(train_cmd(builtin, stopped, *N, "--resume", "auto", nproc=nproc), tmp_path)
    assert steps(stopped) == [1, 2, 3, 4, 5, 6]
    a, b = (load_file(straight / "final" / "model.safetensors"),
            load_file(stopped / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_sigterm_at_an_evaluation_and_export_step_runs_them_on_resume(builtin, tmp_path):
    """With an evaluation and an export due after every step, SIGTERM stops the run after some step
    k before its evaluation and export (the loop breaks at the checkpoint); the resumed run runs
    both first, so every step has its held-out row and its step_N folder."""
    out = tmp_path / "out"
    N = ["--steps", "5", "--eval-every", "1", "--eval-samples", "2", "--eval-data",
         str(builtin[0]["test"]), "--export-every", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(train_cmd(builtin, out, *N), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while (not ((out / "metrics.jsonl").exists() and len(steps(out)) >= 3)
           and time.time() < deadline):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert "SIGTERM: stopped after step" in stdout, stdout[-2000:] + stderr[-4000:]
    k = int(stdout.split("SIGTERM: stopped after step ")[1].split(";")[0])
    assert k < 5
    run(train_cmd(builtin, out, *N, "--resume", "auto"), tmp_path)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "eval_accuracy" not in r] == [1, 2, 3, 4, 5]
    assert all((out / f"step_{j}" / "model.safetensors").exists() for j in range(1, 6)), k


def test_sft_sigterm_checkpoints_and_resumes_to_the_same_weights(builtin, tmp_path):
    """sft.py too: SIGTERM mid-run -> checkpoint and exit 143 -> --resume auto -> the weights of a
    straight run, one metrics row per step."""
    paths, tiny = builtin

    def cmd(out, *extra):
        return [sys.executable, str(ROOT / "sft.py"), "--model", str(tiny), "--data",
                str(paths["train_cot"]), "--preset", "tiny", "--steps", "12", "--batch-size", "2",
                "--eval-samples", "0", "--out-dir", str(out), *extra]

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(cmd(straight), tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd(stopped), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while (not ((stopped / "metrics.jsonl").exists() and len(steps(stopped)) >= 2)
           and time.time() < deadline):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode == 143
            and "SIGTERM: stopped after step" in out), out[-2000:] + err[-4000:]
    k = len(steps(stopped))
    assert (2 <= k < 12
            and [p.name for p in (stopped / "checkpoints").iterdir()] == [f"step_{k:06d}"])
    proc = run(cmd(stopped, "--resume", "auto"), tmp_path)
    assert f"at step {k}" in proc.stdout and steps(stopped) == list(range(1, 13))
    a, b = (load_file(straight / "final" / "model.safetensors"),
            load_file(stopped / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_export_killed_between_weights_and_tokenizer(builtin, tmp_path):
    """SIGKILL in the middle of an HF export (after the weights, before the tokenizer: the case that
    used to leave a folder that loads with a 1-token tokenizer): `final/` is absent on a first
    export, or still the complete previous one on a re-export; the next export completes and clears
    the leftover temporary folder."""
    script = tmp_path / "killed_export.py"
    script.write_text(f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from checkpoint import save_hf
from model import load_policy
hf, tok = load_policy({str(builtin[1])!r})
if sys.argv[2] == "kill":
    tok.save_pretrained = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)"""
                  """   # dies after the weights
save_hf(hf, tok, sys.argv[1])
""")
    final = tmp_path / "final"
    proc = subprocess.run([sys.executable, str(script), str(final), "kill"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    # weights only, aside
    assert not final.exists() and (tmp_path / "final.tmp" / "model.safetensors").exists()
    run([sys.executable, str(script), str(final), "ok"], tmp_path)
    complete = sorted(p.name for p in final.iterdir())
    assert "tokenizer.json" in complete and not (tmp_path / "final.tmp").exists()
    proc = subprocess.run([sys.executable, str(script), str(final), "kill"], capture_output=True,
                          text=True, timeout=300)
    assert (proc.returncode == -signal.SIGKILL
            and sorted(p.name for p in final.iterdir()) == complete)
    from transformers import AutoTokenizer
    assert (len(AutoTokenizer.from_pretrained(final))
            == len(AutoTokenizer.from_pretrained(builtin[1])) > 700)
