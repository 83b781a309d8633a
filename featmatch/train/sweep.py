"""A grid of training runs (``featmatch train --sweep KEY=V1,V2 ...``), one run folder per cell.

Every cell is the base configuration of the ``train`` command with the swept options replaced;
all cells share the dataset, the step budget and the seed, so they differ only in the swept
values. Cell ``batch-size=128, mining-ratio=0.5`` runs in ``<root>/batch-size-128_mining-ratio-0.5``
with its weights in ``weights.pt`` there (never ``models/``); ``<root>/sweep.json`` lists the
cells and their results, rewritten after each cell, so an interrupted sweep continues with
``--resume`` (finished cells do no more steps).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError

#: Sweepable option -> (which config holds it, its field, its type).
SWEEP_KEYS: dict[str, tuple[str, str, type]] = {
    "batch-size": ("train", "batch_size", int),
    "lr": ("train", "lr", float),
    "mining-ratio": ("loss", "mining_ratio", float),
    "beta": ("loss", "beta", float),
    "gamma": ("loss", "gamma", float),
    "alpha": ("loss", "alpha", float),
    "margin": ("loss", "margin", float),
}


def parse_sweep(specs: Sequence[str]) -> list[tuple[str, list]]:
    """``KEY=V1,V2,...`` values -> ``[(key, [values])]`` in the given order.

    Raises:
        ConfigError: unknown or repeated key, or a value of the wrong type.
    """
    grid: list[tuple[str, list]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if key not in SWEEP_KEYS:
            raise ConfigError(f"unknown --sweep option '{key}'; choose from {', '.join(SWEEP_KEYS)}")
        if not sep or not values.strip():
            raise ConfigError(f"--sweep takes KEY=V1,V2,... got '{spec}'")
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--sweep {key} is given twice")
        kind = SWEEP_KEYS[key][2]
        try:
            vals = [kind(v.strip()) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--sweep {key}: values must be {kind.__name__}s, got '{values}'") from None
        grid.append((key, list(dict.fromkeys(vals))))
    return grid


def grid_cells(grid: Sequence[tuple[str, list]]) -> list[dict]:
    """The cartesian product of the grid, first key slowest: ``[{key: value}]``."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))]


def cell_name(cell: dict) -> str:
    """Folder name of a cell, e.g. ``batch-size-128_mining-ratio-0.5``."""
    return "_".join(f"{k}-{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in cell.items())


def cell_config(base, cell: dict):  # noqa: ANN001, ANN201 - TrainConfig in, TrainConfig out
    """``base`` (:class:`~featmatch.train.loop.TrainConfig`) with the cell's values (validated)."""
    train_kw = {SWEEP_KEYS[k][1]: v for k, v in cell.items() if SWEEP_KEYS[k][0] == "train"}
    loss_kw = {SWEEP_KEYS[k][1]: v for k, v in cell.items() if SWEEP_KEYS[k][0] == "loss"}
    loss = dataclasses.replace(base.loss, **loss_kw)
    return dataclasses.replace(base, loss=loss, **train_kw)


def run_sweep(
    dataset,
    base,
    grid: Sequence[tuple[str, list]],
    root: Path,
    val_pairs=None,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:  # noqa: ANN001
    """Train every cell of ``grid`` on ``dataset`` with ``base``'s budget and seed.

    Returns:
        One record per cell: ``cell``, ``run_dir``, ``weights``, ``steps``, ``wall_s``,
        ``last_loss``, ``val_fpr95``.
    """
    from .loop import train as run_training

    root = Path(root)
    cells = grid_cells(grid)
    configs = [cell_config(base, c) for c in cells]  # every cell is validated before the first one runs
    records: list[dict] = []
    for k, (cell, cfg) in enumerate(zip(cells, configs, strict=True)):
        run_dir = root / cell_name(cell)
        log(f"sweep cell {k + 1}/{len(cells)}: {cell_name(cell)}")
        res = run_training(
            dataset, cfg, run_dir, out=run_dir / "weights.pt", val_pairs=val_pairs, resume=resume, progress=progress
        )
        records.append(
            {
                "cell": cell,
                "run_dir": str(run_dir),
                "weights": str(res.weights),
                "steps": res.steps,
                "wall_s": res.wall_s,
                "last_loss": res.last_loss,
                "val_fpr95": res.val_fpr95,
            }
        )
        root.mkdir(parents=True, exist_ok=True)
        (root / "sweep.json").write_text(
            json.dumps({"base": base.to_dict(), "grid": [list(g) for g in grid], "cells": records}, indent=1) + "\n"
        )
    return records
