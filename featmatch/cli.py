"""The ``featmatch`` command line: a thin layer over the Python API.

Exit codes (the contract scripts rely on):
    0  success (a homography was found / the command did its job)
    1  a bug in featmatch (please report it with FEATMATCH_DEBUG=1 output)
    2  bad usage or unusable input (missing file, not an image, missing model, ...)
    3  no reliable homography (too few matches or inliers, or a degenerate estimate)

Heavy modules (torch, kornia) load only when a command needs them, so ``featmatch --help``
and ``featmatch match`` on a CPU never import torch. A command that needs PyTorch where it is
not installed (train, calibrate, export, ...) says so in one line and exits 2.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time

import click

from . import __version__
from .errors import EXIT_BUG, EXIT_NO_HOMOGRAPHY, FeatmatchError, os_cause, os_condition, printable
from .options import descriptor_option, max_tilt_option, pipeline_options, progress_option, show_progress

#: Subcommands living in other modules: name -> "module:attribute", imported on first use.
LAZY_COMMANDS = {
    "train": "featmatch.train.cli:train",
    "eval-patches": "featmatch.train.cli:eval_patches",
    "calibrate": "featmatch.train.calibrate:calibrate_command",
    "whiten": "featmatch.train.whitening:whiten_command",
    "export": "featmatch.export:export_command",
    "eval": "featmatch.evaluation.cli:eval_command",
    "bench": "featmatch.evaluation.cli:bench_command",
    "stitch": "featmatch.stitching.cli:stitch_command",
    "batch": "featmatch.batching.cli:batch_command",
}


#: Options of the ``featmatch`` group that are also accepted after the subcommand (``featmatch match a b -v``).
_VERBOSITY = re.compile(r"^(-v+|--verbose|-q|--quiet)$")
#: Loggers of libraries whose INFO lines are noise for a user (faiss's loader tries AVX-512 builds
#: first and logs each miss; Ray logs its start-up): shown with -vv only.
NOISY_LOGGERS = ("faiss", "faiss.loader", "ray", "h5py", "numexpr", "onnxruntime")


class FeatmatchGroup(click.Group):
    """A click group that loads some commands lazily and turns errors into exit codes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Move ``-v``/``-q`` given after the subcommand in front of it, where the group reads them
        (unless that subcommand has an option of the same name, such as ``batch -q``)."""
        args = list(args)
        at = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
        if at is not None and at + 1 < len(args):
            command = self.get_command(ctx, args[at])
            own = {o for p in getattr(command, "params", ()) for o in (*p.opts, *p.secondary_opts)}
            end = args.index("--") if "--" in args[at:] else len(args)
            moved = [a for a in args[at + 1 : end] if _VERBOSITY.match(a) and a not in own]
            if moved:
                rest = [a for a in args[at + 1 : end] if not (_VERBOSITY.match(a) and a not in own)]
                args = args[:at] + moved + [args[at]] + rest + args[end:]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [name for name, target in LAZY_COMMANDS.items() if _module_exists(target.split(":")[0])]
        return sorted(set(super().list_commands(ctx)) | set(available))

    def get_command(self, ctx: click.Context, name: str):
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            if _module_exists(module):
                return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FeatmatchError as exc:
            click.echo(f"featmatch: error: {printable(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in ("torch", "kornia", "onnx"):
                raise
            from .engines import TORCH_INSTALL_HINT

            what = f"featmatch {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "this command"
            extra = " (and onnx: pip install onnx)" if exc.name.split(".")[0] == "onnx" else ""
            click.echo(f"featmatch: error: {what} needs PyTorch: {TORCH_INSTALL_HINT}{extra}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("featmatch: interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            if os_condition(exc.errno) is None:  # not the machine's state: a bug, as below
                _internal_error(ctx, exc)
            # the machine's state (full or read-only disk, permissions, too many open files):
            # one line naming the path and the cause, exit 2, whatever code path met it
            where = f"'{printable(exc.filename)}'" if exc.filename else "a file"
            click.echo(f"featmatch: error: cannot use {where}: {os_cause(exc)}", err=True)
            ctx.exit(2)
        except Exception as exc:  # anything else is our bug: say so in one line
            _internal_error(ctx, exc)


def _internal_error(ctx: click.Context, exc: BaseException) -> None:
    """Anything unexpected is featmatch's bug: one line, exit code 1 (the traceback with FEATMATCH_DEBUG=1)."""
    if os.environ.get("FEATMATCH_DEBUG"):
        raise exc
    click.echo(
        f"featmatch: internal error (a bug, please report it): {type(exc).__name__}: {printable(exc)} "
        "(set FEATMATCH_DEBUG=1 for the traceback)",
        err=True,
    )
    ctx.exit(EXIT_BUG)


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=FeatmatchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="featmatch")
@click.option(
    "-v", "--verbose", count=True, help="Log what featmatch does to stderr (-vv: debug detail and library logs)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (also accepted after the subcommand).")
def cli(verbose: int, quiet: bool) -> None:
    """featmatch: match local features between images, estimate homographies, stitch.

    \b
    Examples:
      featmatch match a.jpg b.jpg --plot matches.png
      featmatch match a.jpg b.jpg --descriptor sift --json
      featmatch stitch photos/ -o pano.jpg
      featmatch COMMAND --help        # each command's options and examples
    \b
    Exit codes: 0 success, 2 bad usage or input, 3 no reliable homography, 1 a bug.
    """
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, format="%(name)s: %(message)s")
    if verbose < 2:
        for name in NOISY_LOGGERS:  # libraries' chatter is not featmatch's progress
            logging.getLogger(name).setLevel(logging.WARNING)
    if verbose < 2:  # OpenCV's own log lines would come before featmatch's one-line message
        from .imageio import quiet_opencv

        quiet_opencv()


@cli.command("match")
@click.argument("img1", type=click.Path(dir_okay=True))
@click.argument("img2", type=click.Path(dir_okay=True))
@descriptor_option("hardnet")
@pipeline_options()
@max_tilt_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of a summary.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Write both images side by side with inlier matches in green and outliers in red (PNG/JPEG).",
)
@click.option("--warp", type=click.Path(dir_okay=False), help="Write IMG1 warped into IMG2's frame, blended over IMG2.")
@click.option("--profile", is_flag=True, help="Print per-stage times to stderr.")
@progress_option()
def match_command(
    img1,
    img2,
    descriptor,
    max_keypoints,
    ratio,
    mutual,
    device,
    precision,
    method,
    threshold,
    min_inliers,
    max_side,
    max_tilt,
    as_json,
    plot,
    warp,
    profile,
    progress,
):
    """Estimate the homography mapping IMG1 to IMG2.

    The homography maps full-resolution pixel coordinates (x, y, 1) of IMG1, origin at the
    centre of the top-left pixel (OpenCV's convention), to IMG2.

    \b
    Examples:
      featmatch match examples/roofs1.jpg examples/roofs2.jpg --plot out/matches.png --warp out/warp.png
      featmatch match a.jpg b.jpg --descriptor sift --json
      featmatch match aero1.jpg aero3.jpg --max-tilt 4     # very different viewpoints

    \b
    Exit codes: 0 found, 3 no reliable homography (JSON still printed, with
    "homography": null and a "reason"), 2 bad usage or unreadable input, 1 a bug.
    """
    from .detect import DetectConfig, view_parameters
    from .geometry import GeometryConfig
    from .imageio import load_image, native_stderr_silenced
    from .match import MatchConfig
    from .pipeline import Matcher
    from .plot import check_not_an_input, check_output_path, remove_stale_temporaries

    for option, target in (("--plot", plot), ("--warp", warp)):
        if target:  # before any work: a bad output path must not cost a whole match
            check_output_path(target, option)
            check_not_an_input(target, option, [img1, img2])
            _warn_removed(remove_stale_temporaries(target))
    if plot and warp:
        check_not_an_input(warp, "--warp", [plot])

    # One pair in a short-lived process: the cyclic garbage collector only costs time here
    # (while torch is imported); reference counting still frees every array. It is switched
    # back on afterwards, for callers that run the command in-process (tests, scripts).
    with _cyclic_gc_paused():
        t0 = time.perf_counter()
        with native_stderr_silenced():
            image1, image2 = load_image(img1), load_image(img2)
        load_ms = (time.perf_counter() - t0) * 1000.0
        matcher = Matcher(
            descriptor,
            detect=DetectConfig(max_keypoints=max_keypoints, max_side=max_side, max_tilt=max_tilt),
            match=MatchConfig(ratio=ratio, mutual=mutual),
            geometry=GeometryConfig(method=method, threshold=threshold, min_inliers=min_inliers),
            device=device,
            precision=precision,
            background=True,  # torch, kornia and the CNN load while the images are detected
        )
        # simulated views take seconds: show that work goes on (only on a terminal, as every bar)
        views = len(view_parameters(max_tilt)) if max_tilt > 1 else 0
        with _elapsed_bar(f"matching with {views} simulated views per image", views > 0 and show_progress(progress)):
            result = matcher.match(image1, image2)
        result.timings_ms["load"] = load_ms
        result.timings_ms["total"] += load_ms

        if plot:
            from .plot import draw_matches, write_image

            write_image(
                plot,
                draw_matches(
                    image1.color, image2.color, result.keypoints1, result.keypoints2, result.matches, result.inliers
                ),
            )
            click.echo(f"wrote {plot}", err=as_json)  # on stderr with --json: stdout stays one JSON object
        if warp:
            from .plot import warp_overlay, write_image

            if result.ok:
                write_image(warp, warp_overlay(image1.color, image2.color, result.homography))
                click.echo(f"wrote {warp}", err=as_json)
            else:
                click.echo(f"featmatch: not writing {warp}: there is no homography to warp with", err=True)

        if as_json:
            click.echo(json.dumps(result.to_json()))
        else:
            _print_summary(img1, img2, result)
        if profile:
            t = result.timings_ms
            click.echo("profile (ms): " + "  ".join(f"{k} {v:.1f}" for k, v in t.items()), err=True)
            if result.engine:
                e = result.engine
                click.echo(
                    f"engine: {e['name']} {e['variant'] or e['precision']} on {e['device']}: {e['why']}", err=True
                )
        if not result.ok:
            click.echo(f"featmatch: no reliable homography: {result.reason}", err=True)
            if max_tilt <= 1 and len(result.matches) > 0:
                click.echo(
                    "featmatch: hint: for images seen from very different angles, try --max-tilt 4 "
                    "(simulated oblique views; several times slower)",
                    err=True,
                )
            sys.exit(EXIT_NO_HOMOGRAPHY)


def _warn_removed(files) -> None:
    for f in files:
        click.echo(f"featmatch: warning: removed '{printable(f)}', left by an interrupted write", err=True)


@contextlib.contextmanager
def _elapsed_bar(desc: str, enabled: bool):
    """A one-line indicator on stderr with the elapsed time, for a step that reports no progress of its own."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    stop = threading.Event()
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False)

    def tick():
        while not stop.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


@contextlib.contextmanager
def _cyclic_gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _print_summary(img1: str, img2: str, result) -> None:
    n1, n2 = len(result.keypoints1), len(result.keypoints2)
    click.echo(f"{img1} -> {img2}  [{result.descriptor}]")
    click.echo(f"keypoints {n1} / {n2}   matches {len(result.matches)}   inliers {result.num_inliers}")
    if result.ok:
        click.echo("homography (IMG1 pixels -> IMG2 pixels):")
        for row in result.homography:
            click.echo("  [" + "  ".join(f"{v: .6g}" for v in row) + "]")
    t = result.timings_ms
    waited = f"waiting for the model {t['model']:.0f}, " if "model" in t else ""
    click.echo(
        f"time {t.get('total', 0):.0f} ms (detect {t.get('detect', 0):.0f}, {waited}describe "
        f"{t.get('describe', 0):.0f}, match {t.get('match', 0):.0f}, geometry {t.get('geometry', 0):.0f})"
    )


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="featmatch")
    finally:
        # At exit CPython runs a full cyclic collection over every object, which after importing
        # torch costs about 0.2 s. Frozen objects are skipped; the process ends anyway, and
        # files are still flushed and closed as usual.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
