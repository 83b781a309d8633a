"""``featmatch eval`` and ``featmatch bench``: thin click commands over the evaluation package.

Registered lazily by :mod:`featmatch.cli`; errors are :class:`~featmatch.errors.FeatmatchError`
and become a one-line message and exit code 2 there.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..descriptors import PRECISIONS
from ..errors import ConfigError
from ..geometry import DEFAULT_THRESHOLD
from ..options import PRECISION_HELP, max_tilt_option, progress_option, show_progress

DESCRIPTOR_HELP = "Comma-separated descriptors to compare (sift, rootsift, hardnet, exptloss)."
PEER_HELP = (
    "A published descriptor as a reference row, NAME=PATH to its weights (NAME: hardtfeat, tfeat); repeatable. "
    "Never shipped or downloaded: you give the file."
)
PEER_DIR_HELP = (
    "Take every published descriptor (hardtfeat, tfeat) from this folder, laid out like ../shared/data "
    "(hardtfeat-weights/HardTFeat.pth, tfeat-weights/pretrained-models/tfeat-liberty.params)."
)


def _parse_names(value: str) -> list[str]:
    from ..descriptors import DESCRIPTORS

    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError("--descriptor needs at least one name")
    unknown = [n for n in names if n not in DESCRIPTORS]
    if unknown:
        raise ConfigError(f"unknown descriptor '{unknown[0]}'; choose from {', '.join(sorted(DESCRIPTORS))}")
    return list(dict.fromkeys(names))


@click.command("eval")
@click.argument("data_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--descriptor", "-d", default="sift,rootsift,hardnet,exptloss", show_default=True, help=DESCRIPTOR_HELP)
@click.option("--max-keypoints", "-n", type=click.IntRange(min=1), default=2000, show_default=True, help="Keypoints per image (the strongest), shared by every descriptor.")  # fmt: skip
@click.option("--ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.8, show_default=True, help="Lowe's ratio test.")  # fmt: skip
@click.option("--method", type=click.Choice(["magsac", "accurate", "default", "fast", "prosac", "ransac"]), default="magsac", show_default=True, help="Robust homography estimator (OpenCV USAC variants; as for match).")  # fmt: skip
@click.option("--threshold", type=click.FloatRange(min=0.0, min_open=True), default=DEFAULT_THRESHOLD, show_default=True, help="RANSAC threshold (px).")  # fmt: skip
@click.option("--max-side", type=click.IntRange(min=64), default=2048, show_default=True, help="Downscale larger images for detection.")  # fmt: skip
@max_tilt_option()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where the CNN descriptors and matching run (auto: CUDA when available).")  # fmt: skip
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help=PRECISION_HELP,
)
@click.option("--skip-missing", is_flag=True, help="Report descriptors without weights as skipped instead of failing.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None, help="Evaluate only the first N pairs.")
@click.option("--ransac-runs", type=click.IntRange(min=1, max=1000), default=1, show_default=True, help="Robust fits per pair: its matches in their order, then in seeded random orders; H accuracy and AUC are averaged over the fits (± their spread). The fit is chaotic in its input: with one run a pair near a threshold decides a comparison by one draw of the estimator. 20 is a good value for comparing two columns.")  # fmt: skip
@click.option("--group", "groups", default=None, help="Comma-separated pair groups to keep (e.g. hpatches-v,oxford-test-graf).")  # fmt: skip
@click.option("--peer", "peers", multiple=True, metavar="NAME=PATH", help=PEER_HELP)
@click.option("--peer-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=PEER_DIR_HELP)
@click.option("--whiten", "whiten", multiple=True, metavar="NAME=FILE", help="Also a column NAME+lw: model NAME (fp32) followed by the learned whitening FILE (`featmatch whiten`).")  # fmt: skip
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-out"), show_default=True, help="Where results.json, results.md and curves.png go.")  # fmt: skip
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of the cached synthetic pairs (default $FEATMATCH_CACHE/eval-v1, else ~/.cache/featmatch/eval-v1).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout instead of the tables.")
@progress_option()
def eval_command(
    data_dir,
    descriptor,
    max_keypoints,
    ratio,
    method,
    threshold,
    max_side,
    max_tilt,
    device,
    precision,
    skip_missing,
    max_pairs,
    ransac_runs,
    groups,
    peers,
    peer_dir,
    whiten,
    out_dir,
    cache_dir,
    as_json,
    progress,
):
    """Measure homography accuracy and MMA of descriptors on pairs with a true homography.

    DATA_DIR: HPatches sequences (1.ppm..6.ppm, H_1_2..), Oxford sequences (img1.ppm|png,
    H1to2p..) or EVD (1/, 2/, h/); one sequence or a folder of them. Without DATA_DIR:
    featmatch's own benchmark, the real pair graf1 -> graf3 plus 24 seeded synthetic pairs
    (3 strengths) made from test photographs, cached and reused.

    Every descriptor describes the SAME keypoints (detected once per image). Published
    descriptors given with --peer / --peer-dir are reference columns beside ours. Writes
    results.json, results.md and curves.png into --out-dir.

    \b
    Examples:
      featmatch eval                                  # the bundled benchmark, all descriptors
      featmatch eval ../shared/data/hpatches-sequences -d sift,hardnet --out-dir eval-hp
      featmatch eval DATA -d hardnet --precision fp32 --ransac-runs 20   # compare precisions fairly
    """
    import dataclasses

    from ..detect import DetectConfig
    from ..geometry import GeometryConfig
    from ..match import MatchConfig
    from .datasets import default_pairs, discover
    from .report import markdown, write_outputs
    from .runner import EvalConfig, build_describers, run_evaluation

    names = _parse_names(descriptor)
    config = EvalConfig(
        # SIFT descriptors of simulated views are computed while detecting
        detect=DetectConfig(max_keypoints=max_keypoints, max_side=max_side, max_tilt=max_tilt, with_sift=max_tilt > 1),
        match=MatchConfig(ratio=ratio),
        geometry=GeometryConfig(method=method, threshold=threshold),
        ransac_runs=ransac_runs,
    )
    # Models first: a missing one fails in a second, before any pair is loaded or generated.
    describers, skipped = build_describers(names, device=device, precision=precision, skip_missing=skip_missing)
    describers.update(_whitened(whiten))
    peer_rows = _build_peers(peers, peer_dir, device)
    describers.update(peer_rows)
    pairs = discover(data_dir) if data_dir is not None else default_pairs(cache_dir)
    if groups is not None:
        pairs = select_groups(pairs, groups)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    match_device = next((getattr(d, "device", "cpu") for d in describers.values() if hasattr(d, "device")), "cpu")
    report = run_evaluation(pairs, describers, config, skipped, progress=show_progress(progress), device=match_device)
    # what each learned column actually ran in (``auto`` resolves per machine: int8, bf16 or fp32)
    extra = {"precision": {n: d.precision for n, d in describers.items() if hasattr(d, "precision")}}
    if peer_rows:
        extra["peers"] = {name: d.info() for name, d in peer_rows.items()}
    report = dataclasses.replace(report, settings={**report.settings, **extra})
    paths = write_outputs(report, out_dir)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)  # stdout stays one JSON object
    else:
        click.echo(markdown(report))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _whitened(specs) -> dict:
    """``--whiten NAME=FILE`` -> ``NAME+lw`` -> describer (fp32 model, whitening, L2 normalization)."""
    if not specs:
        return {}
    from ..train.whitening import WhitenedModel, Whitening, parse_whiten_specs

    return {f"{name}+lw": WhitenedModel(name, Whitening.load(path)) for name, path in parse_whiten_specs(specs)}


def _build_peers(specs, peer_dir, device: str) -> dict:
    """``--peer`` / ``--peer-dir`` -> name -> loaded :class:`~featmatch.evaluation.peers.PeerDescriptor`."""
    if not specs and peer_dir is None:
        return {}
    from .peers import build_peers, peer_paths

    return build_peers(peer_paths(specs, peer_dir), device="cpu" if device == "cpu" else "auto")


def select_groups(pairs: list, groups: str) -> list:
    """Keep the pairs whose group is in the comma-separated ``groups``.

    Raises:
        ConfigError: a group no pair has (the message lists the groups there are).
    """
    wanted = [g.strip() for g in groups.split(",") if g.strip()]
    have = list(dict.fromkeys(p.group for p in pairs))
    unknown = [g for g in wanted if g not in have]
    if not wanted or unknown:
        raise ConfigError(
            f"unknown pair group '{unknown[0] if unknown else groups}'; these pairs have {', '.join(have) or 'none'}"
        )
    return [p for p in pairs if p.group in wanted]


@click.command("bench")
@click.option("--quick", is_flag=True, help="A tiny run (seconds) that checks the plumbing, not the speed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the tables.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where the CNNs and the torch search run.")  # fmt: skip
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Repeats per measurement (median).")
@click.option(
    "--only",
    default="engines,pipeline,knn",
    show_default=True,
    help="Comma-separated parts: engines (CPU ISA, auto's choice, patches/s of every engine x precision and "
    "the ISA's limit; a few seconds), pipeline (whole processes), knn (matching alone). describe = engines.",
)
def bench_command(quick, as_json, device, repeats, only):
    """Benchmark featmatch against OpenCV and kornia, side by side, in one run.

    \b
    engines:  the CPU's ISA and cores, what --precision auto picks and why, patches/s of every
              engine x precision (onnx fp32/int8/int8-w7, torch fp32/bf16) vs kornia's HardNet
              fp32 (same weights), and the ISA's limit (MAC/cycle x cores x clock)
    pipeline: whole `match` processes on river1/river2: featmatch sift/hardnet vs an OpenCV
              script vs a kornia script (benchmarks/*.py), wall time and peak memory
    knn:      k=2 search: FAISS vs OpenCV BFMatcher vs torch cdist

    The pipeline part needs a source checkout (benchmarks/ and ../shared/data beside it;
    without the shared data it falls back to the bundled graf1/graf3).

    \b
    Examples:
      featmatch bench --quick                   # seconds: checks that every part runs
      featmatch bench --only engines,knn --json
    """
    from .bench import BENCHMARKS_DIR, BenchConfig, format_report, run_bench

    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    bad = [p for p in parts if p not in ("engines", "describe", "pipeline", "knn")]
    if bad or not parts:
        raise ConfigError(f"unknown --only part '{bad[0] if bad else only}'; choose from engines, pipeline, knn")
    if "pipeline" in parts and not BENCHMARKS_DIR.is_dir():
        raise ConfigError(
            "bench's pipeline part runs competitor scripts from a source checkout (benchmarks/): run it in a "
            "clone of featmatch, or use --only engines,knn"
        )
    config = BenchConfig.quick(device) if quick else BenchConfig(device=device)
    if repeats is not None:
        config = config.with_repeats(repeats)
    result = run_bench(config, parts, log=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(format_report(result))
