"""The ``featmatch train`` and ``featmatch eval-patches`` commands.

Both are plain :class:`click.Command` objects (``train`` and ``eval_patches``) that the
top-level ``featmatch`` group registers lazily. Errors are raised as ``FeatmatchError``
subclasses; the top-level CLI turns them into one-line messages.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from ..errors import ConfigError
from ..options import progress_option, show_progress

logger = logging.getLogger(__name__)

def _setup_logging(run_dir: Path | None) -> None:
    root = logging.getLogger("featmatch")
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = (run_dir / "train.log").resolve()
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(fh)


@click.command(
    "train",
    help="""Train a learned patch descriptor (HardNet architecture) on self-supervised patches.

Patches come from random homographies and photometric changes of the TRAIN photos only
(wallpaper-photos/*.jpg and skimage brick, camera, chelsea, coins, grass, gravel, moon, page,
rocket under --data-root); the patch dataset is built once and cached under --cache-dir.
Checkpoints, log.jsonl, train.log and summary.json go to --run-dir (default runs/<loss>
under the current directory); the final fp16 weights go to --out (default
<run-dir>/<loss>.pt) when the run ends. Nothing is written into featmatch's own models;
use the result with FEATMATCH_MODELS=<run-dir> (the command prints how). The data folder is
--data-root, else $FEATMATCH_DATA, else ../shared/data beside a source checkout.

\b
Examples:
  featmatch train --loss hardnet --steps 2000
  featmatch train --loss exptloss --beta 2 --gamma 2 --alpha 1 --mining-ratio 0.5
  featmatch train --loss hardnet --data-root ../shared/data --run-dir runs/h1
  featmatch train --loss hardnet --width 0.5 --teacher models/hardnet.pt --batch-size 1024
  featmatch train --loss hardnet --resume          # continue runs/hardnet/checkpoint.pt
  featmatch train --loss hardnet --eval-only       # FPR95 of the shipped hardnet on the test pairs
""",
)
@click.option("--loss", "loss_name", type=click.Choice(["hardnet", "exptloss"]), default="hardnet", show_default=True,
              help="hardnet: triplet margin loss with the hardest in-batch negative; exptloss: Exp-TLoss.")
@click.option("--steps", type=int, default=2000, show_default=True,
              help="Optimizer steps; the learning rate decays linearly to 0 over them.")
@click.option("--minutes", type=float, default=None, help="Wall-clock cap; the run stops and saves when reached.")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Distinct points per batch (2 patches each).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--margin", type=float, default=1.0, show_default=True, help="HardNet triplet margin.")
@click.option("--beta", type=float, default=2.0, show_default=True, help="Exp-TLoss exponent of the positive distance.")
@click.option("--gamma", type=float, default=2.0, show_default=True, help="Exp-TLoss exponent of the negative distance.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Exp-TLoss margin (on D^beta - D^gamma).")
@click.option("--mining-ratio", type=float, default=0.5, show_default=True,
              help="Exp-TLoss: fraction of the batch's hardest positives kept.")
@click.option("--form", type=click.Choice(["triplet", "siamese"]), default="triplet", show_default=True,
              help="Exp-TLoss form: [D_ap^b - D_an^g + a]+ or D_ap^b + [a - D_an^g]+.")
@click.option("--width", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Channel multiplier of the network (0.5: a quarter of HardNet's work, as hardnet-lite).")
@click.option("--teacher", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Distil from these weights: the student also reproduces the teacher's descriptors and distances.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialization, sampling and augmentation.")
@click.option("--resume", is_flag=True, help="Continue from <run-dir>/checkpoint.pt if it exists.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Final fp16 weights [default: <run-dir>/<loss>.pt; with --eval-only: the shipped weights].")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoints, logs and the final weights [default: runs/<loss> under the current directory].")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The data folder (featmatch's shared data) [default: $FEATMATCH_DATA, else ../shared/data "
                   "beside a source checkout].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where built patch datasets are cached [default: runs/cache].")
@click.option("--warps", type=int, default=40, show_default=True, help="Random homographies per train photo.")
@click.option("--max-keypoints", type=int, default=4000, show_default=True, help="DoG keypoints per image.")
@click.option("--workers", type=int, default=2, show_default=True, help="Processes that build the dataset.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:k].")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bfloat16 autocast.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--val-every", type=int, default=200, show_default=True,
              help="Steps between validation FPR95 checks (0: never).")
@click.option("--eval-only", is_flag=True, help="Do not train: report FPR95/mAP of --out's weights on the test pairs.")
@progress_option()
@click.option("--sweep", "sweep", multiple=True, metavar="KEY=V1,V2",
              help="Train a grid instead of one model (KEY: batch-size, lr, mining-ratio, beta, gamma, alpha, margin; "
                   "repeatable): one run folder per cell under --run-dir [default: runs/sweep-<loss>], same steps "
                   "and seed, weights.pt in each; never writes models/.")
def train(loss_name: str, steps: int, minutes: float | None, batch_size: int, lr: float, margin: float, beta: float,
          gamma: float, alpha: float, mining_ratio: float, form: str, width: float, teacher: Path | None, seed: int,
          resume: bool, out: Path | None,
          run_dir: Path | None, data_root: Path | None, cache_dir: Path | None, warps: int, max_keypoints: int,
          workers: int, threads: int | None, device: str, bf16: bool, checkpoint_every: int, val_every: int,
          eval_only: bool, progress: bool | None, sweep: tuple[str, ...]) -> None:
    from ..network import MODELS_ENV, weight_path
    from .datasets import (
        WarpConfig,
        build_val_pairs,
        build_warp_dataset,
        default_cache_dir,
        default_data_root,
        train_photos,
    )
    from .loop import TrainConfig
    from .loop import train as run_training
    from .losses import LossConfig
    from .sweep import parse_sweep

    grid = parse_sweep(sweep)
    if grid and (out is not None or eval_only):
        raise ConfigError("--sweep writes weights.pt into each cell's run folder; it takes no --out or --eval-only")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    data_root = data_root or default_data_root()
    cache_dir = cache_dir or default_cache_dir()
    if eval_only:
        _print_eval([f"{loss_name}={out or weight_path(loss_name)}"], data_root, cache_dir, json_out=None)
        return
    run_dir = run_dir or Path("runs") / (f"sweep-{loss_name}" if grid else loss_name)
    out = out or run_dir / f"{loss_name}.pt"
    loss_cfg = LossConfig(name=loss_name, margin=margin, beta=beta, gamma=gamma, alpha=alpha,
                          mining_ratio=mining_ratio, form=form)
    cfg = TrainConfig(loss=loss_cfg, steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, seed=seed,
                      checkpoint_every=checkpoint_every, val_every=val_every, bf16=bf16, device=device, threads=threads,
                      width=width, teacher=None if teacher is None else str(teacher))
    warp_cfg = WarpConfig(warps_per_image=warps, max_keypoints=max_keypoints)
    if grid:  # every cell must be a valid configuration before the dataset is built
        from .sweep import cell_config, grid_cells

        for cell in grid_cells(grid):
            cell_config(cfg, cell)
    _setup_logging(run_dir)
    t0 = time.time()
    dataset = build_warp_dataset(train_photos(data_root), warp_cfg, cache_dir=cache_dir, workers=workers,
                                 progress=show_progress(progress))
    click.echo(f"dataset: {len(dataset)} patches of {dataset.num_points} points ({time.time() - t0:.0f} s)", err=True)
    val_pairs = build_val_pairs(data_root, cache_dir) if val_every else None
    if grid:
        from .sweep import run_sweep

        records = run_sweep(dataset, cfg, grid, run_dir, val_pairs=val_pairs, resume=resume, progress=show_progress(progress),
                            log=lambda msg: click.echo(msg, err=True))
        for r in records:
            val = "-" if r["val_fpr95"] is None else f"{r['val_fpr95']:.4f}"
            click.echo(f"{Path(r['run_dir']).name}: {r['steps']} steps in {r['wall_s'] / 60:.1f} min, last loss "
                       f"{r['last_loss']:.4f}, validation FPR95 {val}; weights {r['weights']}")
        specs = ",".join(f"{Path(r['run_dir']).name}={r['weights']}" for r in records)
        click.echo(f"sweep summary: {run_dir / 'sweep.json'}; score on the test pairs with: "
                   f"featmatch eval-patches --descriptor {specs}")
        return
    result = run_training(dataset, cfg, run_dir, out=out, val_pairs=val_pairs, resume=resume, progress=show_progress(progress))
    val = "-" if result.val_fpr95 is None else f"{result.val_fpr95:.4f}"
    click.echo(f"{loss_name}: {result.steps} steps in {result.wall_s / 60:.1f} min, last loss {result.last_loss:.4f}, "
               f"validation FPR95 {val}; weights {result.weights} (fp16 max |diff| {result.fp16_max_abs_diff})")
    # `featmatch calibrate` then writes the int8 calibration beside the weights (--precision int8)
    click.echo(f"use them: {MODELS_ENV}={out.parent} featmatch match a.jpg b.jpg --descriptor {loss_name}"
               + ("" if out.stem == loss_name else f"  (or rename {out.name} to {loss_name}.pt)"))


def _resolve_descriptor(spec: str, precision: str = "fp32"):  # noqa: ANN202 - returns a callable
    """``sift``, a model name in models/, or ``label=path.pt`` -> (label, patches -> descriptors).

    ``precision`` other than fp32 runs a model name through featmatch's inference path
    (:class:`featmatch.descriptors.CNNDescriptor`), as ``match`` does.
    """
    from .metrics import describe_patches, sift_patch_descriptors

    if spec == "sift":
        return "sift", sift_patch_descriptors
    import torch

    from ..errors import ModelNotFoundError
    from ..network import HardNet, load_weights

    if "=" in spec or spec.endswith(".pt"):
        label, _, path_s = spec.rpartition("=")
        path = Path(path_s)
        label = label or path.stem
        if not path.is_file():
            raise ModelNotFoundError(f"no weights at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = HardNet()
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except Exception as exc:  # a foreign file is a user problem
            raise ModelNotFoundError(f"weights {path} cannot be loaded: {exc}") from None
        model.eval()
    elif precision != "fp32":
        from ..descriptors import CNNDescriptor

        describer = CNNDescriptor(spec, device="cpu", precision=precision)
        return f"{spec}@{describer.precision}", lambda patches: torch.from_numpy(
            describer.describe_patches(patches.float() / 255.0 if patches.dtype == torch.uint8 else patches)
        )
    else:
        label, model = spec, load_weights(spec)
    return label, lambda patches: describe_patches(model, patches)


def _whitened_rows(specs: tuple[str, ...] | list[str]) -> list:
    """``--whiten NAME=FILE`` -> ``(NAME+lw, patches -> descriptors)`` rows (fp32 model + whitening)."""
    if not specs:
        return []
    import torch

    from .whitening import WhitenedModel, Whitening, parse_whiten_specs

    rows = []
    for name, path in parse_whiten_specs(specs):
        model = WhitenedModel(name, Whitening.load(path))
        rows.append((f"{name}+lw", lambda patches, m=model: torch.from_numpy(m.describe_patches(patches))))
    return rows


def _peer_rows(peers: tuple[str, ...] | list[str], peer_dir: Path | None) -> list:
    """``--peer`` / ``--peer-dir`` -> ``(name, patches -> descriptors)`` rows (weights loaded now)."""
    if not peers and peer_dir is None:
        return []
    import torch

    from ..evaluation.peers import build_peers, peer_paths

    rows = []
    for name, peer in build_peers(peer_paths(peers, peer_dir)).items():
        rows.append((name, lambda patches, peer=peer: torch.from_numpy(peer.describe_patches(patches))))
    return rows


def subset_pairs(pairs, max_pairs: int):  # noqa: ANN001, ANN201 - PairSet in, PairSet out
    """At most ``max_pairs`` pairs, evenly spaced over the set (positives and negatives alike).

    The pairs are stored image pair by image pair, positives then negatives, so an even spacing
    keeps both labels and every source.
    """
    import numpy as np
    import torch

    from .datasets import PairSet

    if max_pairs < 2:
        raise ConfigError(f"--max-pairs must be at least 2, got {max_pairs}")
    if max_pairs >= len(pairs):
        return pairs
    idx = torch.from_numpy(np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(np.int64)))
    return PairSet(pairs.a[idx], pairs.b[idx], pairs.label[idx], pairs.source[idx], pairs.sources)


def _print_eval(specs: list[str], data_root: Path, cache_dir: Path, json_out: Path | None,
                precision: str = "fp32", peers: tuple[str, ...] = (), peer_dir: Path | None = None,
                max_pairs: int | None = None, whiten: tuple[str, ...] = ()) -> None:
    import numpy as np

    from .datasets import build_test_pairs
    from .metrics import fpr95, patch_map

    _setup_logging(None)
    resolved = [_resolve_descriptor(spec, precision) for spec in specs]  # fail on a bad name before building pairs
    resolved += _whitened_rows(whiten)
    peer_rows = _peer_rows(peers, peer_dir)
    peer_names = [name for name, _ in peer_rows]
    resolved += peer_rows
    pairs = build_test_pairs(data_root, cache_dir)
    if max_pairs is not None:
        pairs = subset_pairs(pairs, max_pairs)
    lab = pairs.label.numpy()
    src = pairs.source.numpy()
    real = np.array(["->" in pairs.sources[s] for s in src])
    n_pos = int(lab.sum())
    click.echo(f"test pairs: {len(pairs)} ({n_pos} positive, {len(pairs) - n_pos} negative) from "
               f"{len(pairs.sources)} image pairs; synthetic: {int((~real & lab).sum())} positive, "
               f"graf1->graf3: {int((real & lab).sum())} positive")
    if peer_names:
        click.echo(f"reference rows (published weights): {', '.join(peer_names)}")
    header = f"{'descriptor':<12} {'FPR95 all':>10} {'FPR95 synth':>12} {'FPR95 graf':>11} {'mAP all':>8} {'mAP/pair':>9}"
    click.echo(header)
    click.echo("-" * len(header))
    rows = []
    for label, fn in resolved:
        da, db = fn(pairs.a), fn(pairs.b)
        dist = (da - db).norm(dim=1).numpy()
        row = {
            "descriptor": label,
            "fpr95": fpr95(dist, lab),
            "fpr95_synthetic": fpr95(dist[~real], lab[~real]),
            "fpr95_graf": fpr95(dist[real], lab[real]) if real.any() else float("nan"),
            "map": patch_map(dist, lab),
            "map_per_pair": patch_map(dist, lab, src),
            "peer": label in peer_names,
        }
        rows.append(row)
        click.echo(f"{label:<12} {row['fpr95']:>10.4f} {row['fpr95_synthetic']:>12.4f} {row['fpr95_graf']:>11.4f} "
                   f"{row['map']:>8.4f} {row['map_per_pair']:>9.4f}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


@click.command(
    "eval-patches",
    help="""Patch verification on the fixed TEST pairs: FPR95 (lower is better) and mAP.

The pairs (seed 12345) are positive and negative (1:1) patch pairs from synthetic warps of the
test photos astronaut, coffee, motorcycle_left, motorcycle_right and from graf1->graf3 with its
ground-truth homography, all cut by featmatch's patch extractor. They are built once and cached.

DESCRIPTOR is a comma-separated list of: sift (OpenCV SIFT of each patch, a keypoint at the
patch centre), a model name found in models/ (hardnet, exptloss), or LABEL=path/to/weights.pt.

\b
Example:
  featmatch eval-patches --descriptor hardnet,exptloss,sift
""",
)
@click.option("--descriptor", "descriptors", default="hardnet,exptloss,sift", show_default=True,
              help="Comma-separated descriptors to evaluate.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The data folder (featmatch's shared data) [default: $FEATMATCH_DATA, else ../shared/data "
                   "beside a source checkout].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the built pairs are cached [default: runs/cache].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON here.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "int8", "auto"]), default="fp32", show_default=True,
              help="Arithmetic of the named models: fp32 is the reference; the others run match's inference path.")
@click.option("--peer", "peers", multiple=True, metavar="NAME=PATH",
              help="A published descriptor as a reference row (hardtfeat, tfeat), NAME=PATH to its weights; repeatable.")
@click.option("--peer-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Take every published descriptor from this folder (laid out like ../shared/data).")
@click.option("--whiten", "whiten", multiple=True, metavar="NAME=FILE",
              help="Also a row NAME+lw: model NAME followed by the learned whitening FILE (`featmatch whiten`).")
@click.option("--max-pairs", type=click.IntRange(min=2), default=None,
              help="Score only this many pairs, evenly spaced over the set (quick checks; not comparable).")
def eval_patches(descriptors: str, data_root: Path | None, cache_dir: Path | None, json_out: Path | None,
                 precision: str, peers: tuple[str, ...], peer_dir: Path | None, whiten: tuple[str, ...],
                 max_pairs: int | None) -> None:
    from .datasets import default_cache_dir, default_data_root

    specs = [s.strip() for s in descriptors.split(",") if s.strip()]
    if not specs and not peers and peer_dir is None and not whiten:
        raise ConfigError("--descriptor needs at least one descriptor")
    _print_eval(specs, data_root or default_data_root(), cache_dir or default_cache_dir(), json_out, precision,
                peers=peers, peer_dir=peer_dir, max_pairs=max_pairs, whiten=whiten)
