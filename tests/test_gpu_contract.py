"""What a GPU node would hit first, run on CPU: NCCL's contract, uneven ranks, the non-finite guard.

A CPU test passes where a GPU job dies unless it emulates the GPU's contract:
- NCCL serves CUDA tensors only. tests/cuda_only_backend.py registers a backend that, like NCCL,
  is registered for CUDA only; the entry points run 2-rank FSDP with the process group a GPU node
  gets ("cpu:gloo,cuda:<that backend>"), so every CPU collective they make must be served by the
  gloo half.
- A rank that issues a different number of collectives than another aborts under gloo (and hangs
  under NCCL): the runs below give one rank only images and the other only videos, and mix both
  kinds in one micro-batch.
"""
import json
import re
import sys

import pytest

from conftest import GPU_CONTRACT as LAUNCH, GPU_GROUP, ROOT, run_cmd as run

# Per rank, the media kind of each draw from its prompt stream: 2 per step, 2 steps. Step 1 mixes
# images and videos on both ranks (in one micro-batch); in step 2 rank 0 holds only images and rank
# 1 only videos.
UNEVEN = [["image", "video", "image", "image"], ["video", "image", "video", "video"]]



def arranged(src_json, out_json, kinds_per_rank, seed):
    """Write a copy of the built-in JSON whose 2-rank prompt streams (loader.prompt_stream with
    `seed`) draw media of the given kinds in order; returns the path. Media paths stay relative to
    the source's folder."""
    import distributed
    import loader
    pool = json.loads(src_json.read_text())
    by_kind = {k: [s for s in pool if s["data_type"] == k] for k in ("image", "video")}
    n = sum(len(k) for k in kinds_per_rank)
    slots = [None] * n
    for rank, kinds in enumerate(kinds_per_rank):
        stream = loader.prompt_stream(list(range(n)), distributed.Dist(rank=rank, world=2), seed)
        for kind in kinds:
            slots[next(stream)] = kind
    out_json.write_text(json.dumps([by_kind[k].pop() for k in slots]))
    return out_json


def test_backend_spec_serves_cpu_tensors_on_gpu_nodes():
    import distributed
    assert distributed.backend_spec("cuda") == "cpu:gloo,cuda:nccl"
    assert distributed.backend_spec("cpu") == "gloo"
    with pytest.raises(ValueError):
        distributed.backend_spec("mps")


COLLECTIVES = re.compile(r"\b(?:dist|tdist|torch\.distributed)\.(all_reduce|all_gather\w*|"
                         r"broadcast\w*|reduce\w*|gather\w*|scatter\w*|barrier|send|recv|"
                         r"all_to_all\w*)\(")


def test_no_collective_outside_distributed_py():
    """Every collective goes through distributed.py (FSDP's and DCP's own excepted), so the rule
    that every rank makes the same collectives, on a device its group serves, is kept in one
    file."""
    files = [p for p in list(ROOT.glob("*.py")) + list((ROOT / "bench").glob("*.py"))
             if p.name != "distributed.py"]
    offenders = [f"{p.name}: {m.group(0)}" for p in files
                 for m in COLLECTIVES.finditer(p.read_text())]
    assert not offenders, offenders


def test_cuda_only_group_refuses_cpu_tensors(tmp_path):
    """The emulation is faithful: in a group that only the CUDA-only backend serves (what an
    NCCL-only group is), a CPU all-reduce fails with NCCL's own message; in the composite group it
    is served."""
    script = tmp_path / "probe.py"
    script.write_text("import sys, torch\nsys.path.insert(0, %r)\nimport distributed\n"
                      "proc = distributed.init_distributed('cpu', sys.argv[1])\n"
                      "total = float(distributed.all_reduce_sum(torch.ones(()), proc))\n"
                      "open(f'rank{proc.rank}.txt', 'w').write(str(total))\n"
                      "distributed.cleanup(proc)\n" % str(ROOT))
    bad = run(LAUNCH + [str(script), "cuda:cudaonly"], tmp_path, ok=False)
    assert (bad.returncode != 0
            and "No backend type associated with device type cpu" in bad.stdout + bad.stderr)
    assert not list(tmp_path.glob("rank*.txt"))
    run(LAUNCH + [str(script), "cpu:gloo,cuda:cudaonly"], tmp_path)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2.0", "2.0"]


def test_train_fsdp_uneven_ranks_under_nccl_contract(builtin, tmp_path):
    paths, tiny = builtin
    data = arranged(paths["train"], tmp_path / "uneven.json", UNEVEN, seed=3)
    run(LAUNCH + [str(ROOT / "train.py"), "--model", str(tiny), "--data", str(data), "--media-root",
                  str(paths["train"].parent), "--preset", "tiny", "--seed", "3", "--steps", "2",
                  "--G", "2", "--max-completion-length", "6", "--prompts-per-rank", "2",
                  "--groups-per-micro-batch", "2", "--out-dir", str(tmp_path / "out")] + GPU_GROUP,
        tmp_path)
    rows = [json.loads(line)
            for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["skipped_media"] == 0 for r in rows)
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("extra", [["--lora-rank", "4"], ["--cpu-offload"]],
                         ids=["lora", "offload"])
def test_train_lora_and_offload_uneven_ranks_under_nccl_contract(builtin, tmp_path, extra):
    """LoRA (the reference = adapters off) and FSDP2 CPU offload under the GPU node's process group,
    with one rank holding only images and the other only videos in step 2: the same collectives on
    both ranks."""
    paths, tiny = builtin
    data = arranged(paths["train"], tmp_path / "uneven.json", UNEVEN, seed=3)
    run(LAUNCH + [str(ROOT / "train.py"), "--model", str(tiny), "--data", str(data), "--media-root",
                  str(paths["train"].parent), "--preset", "tiny", "--seed", "3", "--steps", "2",
                  "--G", "2", "--max-completion-length", "6", "--prompts-per-rank", "2",
                  "--groups-per-micro-batch", "2", "--out-dir", str(tmp_path / "out"),
                  *extra] + GPU_GROUP, tmp_path)
    rows = [json.loads(line)
            for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["skipped_media"] == 0 for r in rows)
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_sft_fsdp_uneven_ranks_under_nccl_contract(builtin, tmp_path):
    paths, tiny = builtin
    data = arranged(paths["train_cot"], tmp_path / "uneven_cot.json", UNEVEN, seed=3)
    run(LAUNCH + [str(ROOT / "sft.py"), "--model", str(tiny), "--data", str(data), "--media-root",
                  str(paths["train_cot"].parent), "--preset", "tiny", "--seed", "3", "--steps", "2",
                  "--batch-size", "2", "--grad-accum", "1", "--eval-data", str(paths["test"]),
                  "--eval-samples", "2", "--eval-max-new-tokens", "4", "--out-dir",
                  str(tmp_path / "out")] + GPU_GROUP, tmp_path)

    rows = [json.loads(line)
            for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert [r["eval_n"] for r in rows if "eval_n" in r] == [2, 2]


def test_nonfinite_loss_stops_train_before_the_optimizer_step_and_checkpoint(builtin, tmp_path):
    """Two optimizer passes over one rollout (--num-iterations 2) at lr 1e30: the first update turns
    the weights to inf, so the second pass's loss is not finite. Both ranks must stop there, naming
    step 1 and the term, with no checkpoint and no export written."""
    paths, tiny = builtin
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "train.py"), "--model", str(tiny), "--data", str(paths["train"]),
                "--preset", "tiny", "--steps", "2", "--G", "2", "--max-completion-length", "4",
                "--num-iterations", "2", "--lr", "1e30", "--save-every", "1",
                "--out-dir", str(tmp_path / "out")], tmp_path, ok=False)
    assert proc.returncode != 0
    assert (len(re.findall(r"train.py: step 1: non-finite (loss|grad_norm)", proc.stderr))
            == 2), proc.stderr[-3000:]
    assert (not list((tmp_path / "out").glob("checkpoints/step_*"))
            and not (tmp_path / "out" / "final").exists())


def test_nonfinite_loss_stops_sft_before_the_optimizer_step_and_save(builtin, tmp_path):
    """lr 1e30 turns the weights to inf in the first update, so step 2's loss is not finite: the run
    stops there, keeps step 1's HF folder and writes none for step 2."""
    paths, tiny = builtin
    proc = run([sys.executable, str(ROOT / "sft.py"), "--model", str(tiny), "--data",
                str(paths["train_cot"]), "--preset", "tiny", "--steps", "3", "--batch-size", "2",
                "--lr", "1e30", "--warmup-steps", "0", "--eval-samples", "0", "--export-every", "1",
                "--out-dir", str(tmp_path / "out")],
               tmp_path, ok=False)
    assert proc.returncode != 0
    assert re.search(r"sft.py: step 2: non-finite (loss|grad_norm)",
                     proc.stderr), proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("step_*")) == ["step_1"]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """bench/gpu_check.sh --dry-run: the GPU check's code path on CPU (narrow model, small
    settings), so it still runs when a GPU is lent."""
    proc = run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--cache-dir",
                str(tmp_path / "cache")],
               tmp_path)
    for phase in ["rollout", "reference log-probs", "policy log-probs", "backward", "optimizer",
                  "plan.py (1 GPU"]:
        assert phase in proc.stdout, phase
