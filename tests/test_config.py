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
