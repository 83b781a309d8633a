"""``featmatch eval`` and ``featmatch bench``: thin click commands over the evaluation package.

Registered lazily by :mod:`featmatch.cli`; errors are :class:`~featmatch.errors.FeatmatchError`
and become a one-line message and exit code 2 there.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ..geometry import DEFAULT_THRESHOLD
from ..options import max_tilt_option

DESCRIPTOR_HELP = "Comma-separated descriptors to compare (sift, rootsift, hardnet, exptloss)."


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
@click.option("--method", type=click.Choice(["magsac", "accurate", "default", "fast", "prosac", "ransac"]), default="magsac", show_default=True)  # fmt: skip
@click.option("--threshold", type=click.FloatRange(min=0.0, min_open=True), default=DEFAULT_THRESHOLD, show_default=True, help="RANSAC threshold (px).")  # fmt: skip
@click.option("--max-side", type=click.IntRange(min=64), default=2048, show_default=True, help="Downscale larger images for detection.")  # fmt: skip
@max_tilt_option()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]), default="auto", show_default=True
)
@click.option("--skip-missing", is_flag=True, help="Report descriptors without weights as skipped instead of failing.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None, help="Evaluate only the first N pairs.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-out"), show_default=True, help="Where results.json, results.md and curves.png go.")  # fmt: skip
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder of the cached synthetic pairs (default $FEATMATCH_CACHE/eval-v1, else ~/.cache/featmatch/eval-v1).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON on stdout instead of the tables.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
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
    out_dir,
    cache_dir,
    as_json,
    no_progress,
):
    """Measure homography accuracy and MMA of descriptors on pairs with a true homography.

    DATA_DIR: HPatches sequences (1.ppm..6.ppm, H_1_2..), Oxford sequences (img1.ppm|png,
    H1to2p..) or EVD (1/, 2/, h/); one sequence or a folder of them. Without DATA_DIR:
    featmatch's own benchmark, the real pair graf1 -> graf3 plus 24 seeded synthetic pairs
    (3 strengths) made from test photographs, cached and reused.

    Every descriptor describes the SAME keypoints (detected once per image). Writes
    results.json, results.md and curves.png into --out-dir.
    """
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
    )
    # Models first: a missing one fails in a second, before any pair is loaded or generated.
    describers, skipped = build_describers(names, device=device, precision=precision, skip_missing=skip_missing)
    pairs = discover(data_dir) if data_dir is not None else default_pairs(cache_dir)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    match_device = next((getattr(d, "device", "cpu") for d in describers.values() if hasattr(d, "device")), "cpu")
    report = run_evaluation(pairs, describers, config, skipped, progress=not no_progress, device=match_device)
    paths = write_outputs(report, out_dir)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(markdown(report))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@click.command("bench")
@click.option("--quick", is_flag=True, help="A tiny run (seconds) that checks the plumbing, not the speed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the tables.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
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
    """
    from .bench import BenchConfig, format_report, run_bench

    parts = tuple(p.strip() for p in only.split(",") if p.strip())
    bad = [p for p in parts if p not in ("engines", "describe", "pipeline", "knn")]
    if bad or not parts:
        raise ConfigError(f"unknown --only part '{bad[0] if bad else only}'; choose from engines, pipeline, knn")
    config = BenchConfig.quick(device) if quick else BenchConfig(device=device)
    if repeats is not None:
        config = config.with_repeats(repeats)
    result = run_bench(config, parts, log=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(format_report(result))
