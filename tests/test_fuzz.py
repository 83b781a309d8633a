"""A short fuzz run in CI; ``python scripts/fuzz.py --count 10000`` is the long one."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _load():
    spec = importlib.util.spec_from_file_location("featmatch_fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_fuzz_run_has_no_failures():
    fuzz = _load()
    stats = fuzz.run(count=300, seed=1)
    assert stats["failure"] == 0
    assert sum(stats.values()) == 300
    # the mix is real: some inputs decode and match, many are refused
    assert stats["ok"] + stats["no-homography"] > 20 and stats["input-error"] > 50


def test_mutations_change_the_bytes():
    import numpy as np

    fuzz = _load()
    rng = np.random.default_rng(0)
    seeds = fuzz.seed_files(rng)
    assert len(seeds) >= 6
    changed = sum(fuzz.mutate(seeds[0], rng) != seeds[0] for _ in range(50))
    assert changed > 35
