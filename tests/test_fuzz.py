"""A short fuzz run in CI; ``python scripts/fuzz.py --count 10000`` is the long one."""

from pathlib import Path

from .conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _load():
    return load_script(SCRIPT, "featmatch_fuzz")


def test_short_fuzz_run_has_no_failures():
    from collections import Counter

    fuzz = _load()
    families: Counter = Counter()
    stats = fuzz.run(count=300, seed=1, families=families)
    assert stats["failure"] == 0
    assert sum(stats.values()) == 300
    # every family runs, the round-3 ones too (output clashes, special files, files changed
    # mid-run, a full disk, EXIF orientation, wrong API types): 15 inputs each
    assert set(families) == set(fuzz.FAMILIES)
    assert all(families[f] == 15 for f in fuzz.ROUND3)
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
