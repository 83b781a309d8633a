"""Command-line options shared by every command that runs the matching pipeline.

``match``, ``stitch`` and ``batch`` expose the same detector, matcher, estimator and device
knobs; they are defined once here so that names, ranges, defaults and help stay the same.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import click

from .descriptors import DEVICES, PRECISIONS
from .detect import C_INT_MAX, DEFAULT_MAX_KEYPOINTS, DEFAULT_MAX_SIDE, MAX_TILT_LIMIT
from .geometry import DEFAULT_METHOD, DEFAULT_THRESHOLD, METHODS
from .match import DEFAULT_RATIO


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (click's range checks let
    ``nan`` through, since every comparison with it is false): exit code 2 before any work."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


#: Help of every ``--precision`` option (the rules are :mod:`featmatch.engines.select`'s).
PRECISION_HELP = (
    "CNN arithmetic: auto = the fastest that keeps quality here: int8 (ONNX Runtime) on x86 with VNNI or AVX2 "
    "(7-bit weights there) and on ARM with dot products, fp32 (ONNX Runtime) on other CPUs or torch fp32 without "
    "onnxruntime; fp16 on CUDA. bf16 only when asked for, on CPUs with native bf16."
)


def progress_option(quiet_short: bool = False) -> Callable:
    """``--progress/--no-progress`` (keyword ``progress``: True, False or None = only on a terminal),
    the one progress switch of every long command; ``quiet_short`` adds ``-q`` for ``--no-progress``."""
    decls = ["--progress/--no-progress"] + ([" /-q"] if quiet_short else [])
    return click.option(
        *decls,
        "progress",
        default=None,
        help="Progress bars on stderr [default: only when stderr is a terminal]"
        + ("; -q is --no-progress." if quiet_short else "."),
    )


def show_progress(progress: bool | None) -> bool:
    """Whether to draw bars: as asked, else when stderr is a terminal and ``featmatch -q`` was not given."""
    if progress is not None:
        return progress
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("quiet"):
        return False
    return sys.stderr.isatty()


def descriptor_names() -> list[str]:
    from .descriptors import DESCRIPTORS

    return sorted(DESCRIPTORS)


def descriptor_option(default: str) -> Callable:
    return click.option(
        "--descriptor",
        "-d",
        type=click.Choice(descriptor_names()),
        default=default,
        show_default=True,
        help="sift/rootsift: OpenCV baseline; hardnet/exptloss: featmatch's trained CNNs (models/).",
    )


def max_tilt_option(
    name: str = "--max-tilt",
    default: float = 1.0,
    help: str = "Also detect in simulated oblique views up to this tilt (ASIFT), for pairs seen from very "
    "different angles: 1 = off, 2 = up to 60 degrees (9 more views), 4 = up to 75 degrees (27 more "
    "views); each view adds up to --max-keypoints keypoints, so time grows with the views.",
) -> Callable:
    return click.option(
        name,
        type=FiniteFloatRange(1.0, MAX_TILT_LIMIT),
        default=default,
        show_default=True,
        help=help,
    )


def pipeline_options(
    min_inliers: int = 12,
    device: str = "auto",
    min_inliers_help: str | None = None,
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
) -> Callable:
    """Decorator adding ``--max-keypoints --max-side --ratio --mutual --method --threshold
    --min-inliers --device --precision`` (keyword arguments of the same names)."""
    options = [
        click.option(
            "--max-keypoints",
            "-n",
            type=click.IntRange(1, C_INT_MAX),
            default=max_keypoints,
            show_default=True,
            help="Keep at most this many keypoints per image, the strongest first.",
        ),
        click.option(
            "--max-side",
            type=click.IntRange(64, C_INT_MAX),
            default=DEFAULT_MAX_SIDE,
            show_default=True,
            help="Images larger than this (longer side, pixels) are downscaled for detection; "
            "results stay in full-resolution pixels.",
        ),
        click.option(
            "--ratio",
            type=FiniteFloatRange(0.0, 1.0, min_open=True),
            default=DEFAULT_RATIO,
            show_default=True,
            help="Lowe's ratio test: keep a match if nearest < RATIO x second nearest distance (1 disables).",
        ),
        click.option(
            "--mutual/--no-mutual",
            default=False,
            show_default=True,
            help="Also require the match to be nearest in the other direction.",
        ),
        click.option(
            "--method",
            type=click.Choice(sorted(METHODS)),
            default=DEFAULT_METHOD,
            show_default=True,
            help="Robust estimator (OpenCV USAC variants; magsac = MAGSAC++).",
        ),
        click.option(
            "--threshold",
            type=FiniteFloatRange(min=0.0, min_open=True),
            default=DEFAULT_THRESHOLD,
            show_default=True,
            help="RANSAC reprojection threshold in pixels: a finite number above 0 (nan and inf are refused: "
            "an infinite threshold would make every match an inlier).",
        ),
        click.option(
            "--min-inliers",
            type=click.IntRange(4, C_INT_MAX),
            default=min_inliers,
            show_default=True,
            help=min_inliers_help or "Fewest inliers for a homography to be reported.",
        ),
        click.option(
            "--device",
            type=click.Choice(DEVICES),
            default=device,
            show_default=True,
            help="Where the CNN runs: auto picks CUDA when available.",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help=PRECISION_HELP,
        ),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate
