"""Shared fixtures: the built-in dataset and the tiny model, built once per test session in a temp folder."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def builtin(tmp_path_factory):
    """(paths of the built-in dataset, tiny model folder) in a session temp dir."""
    import synthetic
    from model import build_builtin_tiny

    root = tmp_path_factory.mktemp("cache")
    paths = synthetic.make_dataset(root / "data", n_train=48, n_test=16)
    tiny = build_builtin_tiny(root / "tiny", paths["train_cot"])
    return paths, tiny
