"""config.py: the command line of every entry point, and which fields count as given (a preset fills
the rest)."""
import pytest

import config
import train


def test_full_flags_are_explicit_and_abbreviations_refused(capsys):
    """`--prompts-per-rank 2` is given and survives the tiny preset; an abbreviation
    (`--prompts-per 2`), which argparse would accept and the preset would then silently overwrite,
    is refused by name."""
    cfg, explicit = config.parse(train.Config, ["--prompts-per-rank", "2", "--lr=0.5"])
    assert explicit == {"prompts_per_rank", "lr"}
    cfg = train.finish_config(cfg, explicit)
    assert cfg.preset == "tiny" and cfg.prompts_per_rank == 2 and cfg.lr == 0.5
    with pytest.raises(SystemExit):
        config.parse(train.Config, ["--prompts-per", "2"])
    assert "unrecognized arguments: --prompts-per 2" in capsys.readouterr().err


def test_shared_flags_are_declared_once_and_listed_after_the_entry_points_own(capsys):
    """The machinery train.py and sft.py share is one declaration (common.Training), what all three
    entry points share another (common.Runtime): the same dataclass Field in each Config, its flag
    parsed by each. --help lists an entry point's own flags first, then each base's under a heading
    naming it; a value outside a field's choices is refused naming the flag and the choices."""
    import dataclasses

    import common
    import eval as ev
    import sft
    fields = {cls: {f.name: f for f in dataclasses.fields(cls)}
              for cls in (train.Config, sft.Config, ev.Config)}
    for name in (f.name for f in dataclasses.fields(common.Training)):
        if name != "logprob_chunk":                        # sft.py's default differs (512)
            assert fields[train.Config][name] is fields[sft.Config][name], name
    for name in (f.name for f in dataclasses.fields(common.Runtime)):
        assert fields[ev.Config][name] is fields[train.Config][name], name
    assert config.parse(ev.Config, ["--report-to", "tensorboard"])[0].report_to == "tensorboard"
    assert config.parse(sft.Config, ["--lora-rank", "4"])[0].lora_rank == 4
    assert config.parse(sft.Config, [])[0].logprob_chunk == 512
    assert config.parse(train.Config, [])[0].logprob_chunk == 256

    with pytest.raises(SystemExit):
        config.parse(train.Config, ["--help"])
    out = capsys.readouterr().out
    heads = [out.index(s) for s in ("\n  --model STR", "\n  --log-rollouts INT",
                                     "\ncommon.Training: how a training run", "\n  --lora-rank INT",
                                     "\ncommon.Runtime: where and how", "\n  --report-to STR")]
    assert heads == sorted(heads), heads
    with pytest.raises(config.UserError, match="--dist must be one of auto, fsdp, ddp, none, "
                                               "got 'zero'"):
        config.check(config.parse(train.Config, ["--dist", "zero"])[0])
