"""The built-in cold start (coldstart.py): its stages, a tiny subprocess run of all three, a tower
that still tells clips apart afterwards, train.py's default starting from it, and the shipped one
(assets/coldstart) being what the current recipe makes from the current built-in data and tiny
default."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from builtin import coldstart
import distributed
from conftest import ROOT, run_cmd


def test_stages_chain_perception_temporal_then_cot(tmp_path):
    cfg = coldstart.Config(perception_epochs=2.0, temporal_steps=50, cot_epochs=3.0)
    stages = coldstart.stage_commands(cfg, tmp_path / "data", tmp_path / "tiny", tmp_path / "out")
    assert [n for n, _ in stages] == ["perception", "temporal", "cot"]
    (_, p_cmd), (_, t_cmd), (_, c_cmd) = stages
    arg = lambda cmd, flag: cmd[cmd.index(flag) + 1]
    assert (arg(p_cmd, "--model") == str(tmp_path / "tiny")
            and arg(p_cmd, "--data").endswith("train_perception.json"))
    # stage 0b starts from stage 0
    assert arg(t_cmd, "--model") == str(tmp_path / "out" / "perception" / "final")
    assert (arg(t_cmd, "--data") == str(tmp_path / "out" / "perception_temporal.json")
            and arg(t_cmd, "--steps") == "50")
    assert arg(t_cmd, "--media-root") == str(tmp_path / "data")
    # stage 1 starts from stage 0b
    assert arg(c_cmd, "--model") == str(tmp_path / "out" / "temporal" / "final")
    assert (arg(c_cmd, "--data") == str(tmp_path / "out" / "cot_mix.json")
            and arg(c_cmd, "--epochs") == "3.0")
    # the mixed file's media stay in data/
    assert arg(c_cmd, "--media-root") == str(tmp_path / "data")
    no_temporal = coldstart.stage_commands(coldstart.Config(temporal_steps=0), tmp_path / "data",
                                           tmp_path / "tiny", tmp_path / "out")
    assert [n for n, _ in no_temporal] == ["perception", "cot"]
    assert arg(no_temporal[1][1], "--model") == str(tmp_path / "out" / "perception" / "final")
    only = coldstart.stage_commands(coldstart.Config(perception_epochs=0, temporal_steps=0,
                                                     cot_perception=0),
                                    tmp_path / "data", tmp_path / "tiny", tmp_path / "out")
    assert [n for n, _ in only] == ["cot"] and arg(only[0][1], "--model") == str(tmp_path / "tiny")
    assert (arg(only[0][1], "--data") == str(tmp_path / "data" / "train_cot.json")
            and "--media-root" not in only[0][1])


def test_perception_temporal_keeps_the_order_dependent_families(tmp_path):
    (tmp_path / "data").mkdir()
    per = [{"problem_id": 0, "data_source": "synthetic/static/color"},
           {"problem_id": 1, "data_source": "synthetic/temporal/size_change"},
           {"problem_id": 2, "data_source": "synthetic/temporal/direction"}]
    (tmp_path / "data" / "train_perception.json").write_text(json.dumps(per))
    kept = json.loads(coldstart.perception_temporal(tmp_path / "data",
                                                    tmp_path / "out").read_text())
    assert kept == per[1:]
    (tmp_path / "data" / "train_perception.json").write_text(json.dumps(per[:1]))
    with pytest.raises(ValueError, match="no synthetic/temporal/ samples"):
        coldstart.perception_temporal(tmp_path / "data", tmp_path / "out")


def test_cot_mix_appends_perception_samples(tmp_path):
    (tmp_path / "data").mkdir()
    cot = [{"problem_id": 0, "process": "<think>bigger. Let me think.</think>"}]
    per = [{"problem_id": i, "process": "<think>red</think>"} for i in range(3)]
    (tmp_path / "data" / "train_cot.json").write_text(json.dumps(cot))
    (tmp_path / "data" / "train_perception.json").write_text(json.dumps(per))
    mixed = json.loads(coldstart.cot_mix(tmp_path / "data", tmp_path / "out", 2).read_text())
    assert mixed == cot + [{"problem_id": "perception_0", "process": "<think>red</think>"},
                           {"problem_id": "perception_1", "process": "<think>red</think>"}]
    with pytest.raises(ValueError, match="train_perception.json has 3 samples"):
        coldstart.cot_mix(tmp_path / "data", tmp_path / "out", 4)


def _features(folder, sample, media):
    import pixels
    from model import load_policy
    hf, _ = load_policy(folder, torch.float32, torch.device("cpu"))
    v = pixels.to_visual(*pixels.load_visual(sample, media)[:3], sample.data_type, media)
    with torch.no_grad():
        return hf.model.visual(v.pixel_values,
                               grid_thw=v.grid_thw[None]).pooler_output           # (tokens, D)


def test_coldstart_runs_and_train_starts_from_it(tmp_path):
    cache = tmp_path / "cache"
    quick = ["--perception-epochs", "0.02", "--temporal-steps", "2", "--cot-epochs", "0.02",
             "--cot-perception", "16", "--eval-samples", "2"]
    out = run_cmd([sys.executable, str(ROOT / "builtin" / "coldstart.py"), "--cache-dir",
                   str(cache), *quick], tmp_path).stdout
    final = cache / "coldstart" / "final"
    assert ("stage perception" in out and "stage temporal" in out and "stage cot" in out
            and str(final) in out)
    for stage in ("perception", "temporal", "cot"):
        rows = [json.loads(l)
                for l in (cache / "coldstart" / stage / "metrics.jsonl").read_text().splitlines()]
        assert any("loss" in r for r in rows) and any("eval_format" in r for r in rows)
        assert (cache / "coldstart" / stage / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the vision tower is frozen in every stage: its weights are the tiny default's, and two clips
    # still differ
    tiny, trained = (load_file(cache / "tiny" / "model.safetensors"),
                     load_file(final / "model.safetensors"))
    assert all(torch.equal(tiny[k], trained[k]) for k in tiny if k.startswith("visual."))
    assert any(not torch.equal(tiny[k], trained[k]) for k in tiny if not k.startswith("visual."))
    import data
    import pixels
    from builtin.tiny import TINY_MEDIA
    samples = data.load_samples(cache / "data" / "test.json")
    a, b = [s for s in samples if s.data_type == "video"][:2]
    fa, fb = (_features(final, a, pixels.MediaConfig(**TINY_MEDIA)),
              _features(final, b, pixels.MediaConfig(**TINY_MEDIA)))
    assert fa.shape == fb.shape
    assert (fa - fb).norm() > 0.2 * fa.norm()                          # not collapsed to one output
    # a second run with the same settings finds every stage built (one with other settings rebuilds)
    again = run_cmd([sys.executable, str(ROOT / "builtin" / "coldstart.py"), "--cache-dir",
                     str(cache), *quick], tmp_path).stdout
    assert ("coldstart: " + str(final) in again and again.count("done before") == 0
            and "rebuilding" not in again)
    # train.py without --model refuses a cold start of another recipe than the default, saying what
    # differs; with --model it trains from it
    rl = ["--cache-dir", str(cache), "--out-dir", str(tmp_path / "rl"), "--steps", "1", "--G", "2",
          "--max-completion-length", "4", "--prompts-per-rank", "1"]
    refused = run_cmd([sys.executable, str(ROOT / "train.py"), *rl], tmp_path, ok=False)
    assert (refused.returncode != 0 and "not the built-in cold start" in refused.stderr
            and "temporal_steps" in refused.stderr)
    train = run_cmd([sys.executable, str(ROOT / "train.py"), *rl, "--model", str(final),
                     "--preset", "tiny"], tmp_path)
    assert f"policy {final}" in train.stdout and (tmp_path / "rl" / "curves.png").exists()
    # what it recorded: the flags it ran with and the built-in data it was built for
    made = json.loads((final / coldstart.RECORD).read_text())
    assert made["recipe"]["perception_epochs"] == 0.02 and made["recipe"]["temporal_steps"] == 2
    assert made["data"] == json.loads((cache / "data" / "manifest.json").read_text())["params"]
    # the shipped cold start: the default recipe on this (the default) built-in data, from this tiny
    # default -- so a change of the recipe's defaults, the data or the tiny model fails here until
    # it is rebuilt and committed
    shipped = coldstart.SHIPPED_COLDSTART
    assert (json.loads((shipped / coldstart.RECORD).read_text())
            == coldstart.record(coldstart.Config(), cache / "data"))
    assert coldstart.shipped_coldstart(cache / "data") == shipped
    assert ((shipped / "tokenizer.json").read_text()
            == (cache / "tiny" / "tokenizer.json").read_text())
    sent = load_file(shipped / "model.safetensors")
    assert sent.keys() == tiny.keys()
    centred = "visual.merger.mlp.2.bias"                               # tiny.center_visual_features
    for k in tiny:
        if k.startswith("visual.") and k != centred:          # frozen in every stage, seeded draws:
            assert torch.equal(sent[k], tiny[k]), k                     # the same bits on every CPU
    # The centred bias is float32 arithmetic on decoded, resized clips; on another CPU the resize
    # (D3) can round a few pixels one level the other way (measured: one level up or down on 1 % of
    # the pixel values moves it by 6.7e-6, on all of them 7.1e-5). A changed centring moves it more:
    # 64 -> 63 clips 2.9e-4, none 0.25.
    gap = (sent[centred] - tiny[centred]).abs().max().item()
    assert gap < 1e-4, (f"{centred}: the shipped cold start differs from this build by {gap:.2e} "
                        f"(max abs)")


def test_train_default_takes_the_shipped_cold_start_only_for_its_data(tmp_path, capsys):
    shipped, data = tmp_path / "shipped", tmp_path / "cache" / "data"
    shipped.mkdir()
    data.mkdir(parents=True)
    params = {"version": 4, "seed": 0, "n_train": 320}
    (shipped / coldstart.RECORD).write_text(json.dumps({"recipe": {}, "data": params}))
    assert coldstart.shipped_coldstart(data, shipped) is None                 # no built-in data yet
    (data / "manifest.json").write_text(json.dumps({"params": params, "files": []}))
    assert coldstart.find_or_build(tmp_path / "cache", distributed.Dist(), shipped) == shipped
    (data / "manifest.json").write_text(json.dumps({"params": params | {"version": 5},
                                                    "files": []}))
    assert coldstart.shipped_coldstart(data, shipped) is None
    said = capsys.readouterr().out
    # says why it is not used
    assert "was built for the built-in data" in said and "'version': 5" in said
    # python builtin/coldstart.py's own build wins
    built = tmp_path / "cache" / "coldstart" / "final"
    built.mkdir(parents=True)
    (built / "config.json").write_text("{}")
    (data / "manifest.json").write_text(json.dumps({"params": params, "files": []}))
    with pytest.raises(ValueError, match="not the built-in cold start for this data: "
                                         "no readable coldstart.json"):
        # no record: not used
        coldstart.find_or_build(tmp_path / "cache", distributed.Dist(), shipped)
    (built / coldstart.RECORD).write_text(json.dumps({"recipe": {}, "data": params}))
    assert coldstart.find_or_build(tmp_path / "cache", distributed.Dist(), shipped) == built
    (built / coldstart.RECORD).write_text(json.dumps({"recipe": {"temporal_steps": 2},
                                                      "data": params}))
    with pytest.raises(ValueError, match="other recipe settings.*temporal_steps"):
        coldstart.find_or_build(tmp_path / "cache", distributed.Dist(), shipped)
    (built / coldstart.RECORD).write_text(json.dumps({"recipe": {},
                                                      "data": params | {"version": 5}}))
    with pytest.raises(ValueError, match="built for the built-in data"):
        coldstart.find_or_build(tmp_path / "cache", distributed.Dist(), shipped)
    (shipped / coldstart.RECORD).write_text('{"recipe": {}}')
    with pytest.raises(ValueError, match="coldstart.json: not a cold start record"):
        coldstart.shipped_coldstart(data, shipped)


def test_build_rebuilds_what_other_settings_made(tmp_path, monkeypatch, capsys):
    """coldstart.build returns an existing final/ only when its record matches the settings, and
    skips a stage only when the same command made its export and no earlier stage ran again (sft.py
    faked)."""
    from dataclasses import replace
    from pathlib import Path
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"params": {"version": 1}, "files": []}))
    (data / "train_perception.json").write_text(json.dumps(
        [{"problem_id": i, "data_source": "synthetic/temporal/size_change"} for i in range(4)]))
    (data / "train_cot.json").write_text("[]")
    monkeypatch.setattr(coldstart.cache, "paths",
                        lambda cache, proc, model=True: {"root": data, "tiny": tmp_path})
    ran = []

    def fake_sft(cmd, cwd, env, check):
        ran.append(Path(cmd[cmd.index("--out-dir") + 1]).name)
        (Path(cmd[cmd.index("--out-dir") + 1]) / "final").mkdir(parents=True)
        (Path(cmd[cmd.index("--out-dir") + 1]) / "final" / "config.json").write_text("{}")

    monkeypatch.setattr(coldstart.subprocess, "run", fake_sft)
    cfg = coldstart.Config(out_dir=str(tmp_path / "out"), cot_perception=2)
    final = coldstart.build(cfg)
    assert ran == ["perception", "temporal", "cot"]
    assert coldstart.build(cfg) == final and len(ran) == 3         # the same settings: nothing runs
    coldstart.build(replace(cfg, cot_lr=1e-4))                    # the last stage's settings differ
    assert (ran[3:] == ["cot"]
            and json.loads((final / coldstart.RECORD).read_text())["recipe"]["cot_lr"] == 1e-4)
    # a middle stage: it and the next rerun
    coldstart.build(replace(cfg, temporal_steps=7, cot_lr=1e-4))
    assert ran[4:] == ["temporal", "cot"]
    assert "rebuilding" in capsys.readouterr().out
