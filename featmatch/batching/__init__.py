"""``featmatch batch``: many image pairs, features computed once and cached, resumable.

    from featmatch.batching import batch

    run = batch("photos/", pairs="shortlist:10", output="results.jsonl", workers=4)
    for r in run:                       # PairResult, the finished ones of earlier runs first
        print(r.image1, r.image2, r.status, r.num_inliers)
    print(run.summary)

h5py (the cache) and Ray (``backend="ray"``) are imported only when a run needs them.
"""

from __future__ import annotations

from .api import BatchRun, batch, default_cache_path, make_config
from .config import BatchConfig
from .pairs import PairsSpec, parse_pairs_spec, shortlist_pairs
from .results import BatchSummary, PairResult

__all__ = [
    "BatchConfig",
    "BatchRun",
    "BatchSummary",
    "PairResult",
    "PairsSpec",
    "batch",
    "default_cache_path",
    "make_config",
    "parse_pairs_spec",
    "shortlist_pairs",
]
