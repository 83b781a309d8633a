"""``featmatch batch``: the command over :func:`featmatch.batching.batch`."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

import click

from ..errors import printable
from ..options import descriptor_option, pipeline_options, progress_option, show_progress
from .config import BACKENDS, CACHE_DTYPES, DEFAULT_BATCH_DESCRIPTOR
from .pairs import DEFAULT_SEQUENTIAL_K, DEFAULT_SHORTLIST_K


@click.command("batch")
@click.argument("images", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.option(
    "--pairs",
    "-p",
    "pairs_spec",
    default="exhaustive",
    show_default=True,
    help=f"exhaustive (all pairs), sequential[:K] (each image with the next K, default {DEFAULT_SEQUENTIAL_K}), "
    f"shortlist[:K] (each image with its K best FAISS-voted candidates, default {DEFAULT_SHORTLIST_K}), "
    "or a file of two image names per line.",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(),  # a folder is refused by batch() itself, in one line
    help="RESULTS file (JSON lines, one per pair). If it exists, its finished pairs are skipped.",
)
@descriptor_option(DEFAULT_BATCH_DESCRIPTOR)
@click.option(
    "--cache",
    type=click.Path(),  # a folder is refused by batch() itself, in one line
    help="HDF5 feature cache [default: <OUTPUT stem>.features.h5 beside OUTPUT].",
)
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Processes (local) or Ray CPUs [default: all cores].")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True, help="Where the work runs.")
@click.option(
    "--ray-address",
    help="A running Ray cluster: HOST:PORT (the head's `ray start --head --port`; run batch on a node of the "
    "cluster), ray://HOST:10001 (Ray Client) or auto. Its token is read from RAY_AUTH_TOKEN or ~/.ray/auth_token; "
    "every node needs featmatch installed (docs/batch-cluster.md). Default: $RAY_ADDRESS, else a local instance.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Match at most this many new pairs, then stop.")
@pipeline_options(device="cpu")
@click.option(
    "--cache-dtype",
    type=click.Choice(CACHE_DTYPES),
    default="float16",
    show_default=True,
    help="How descriptors are stored (float16 keeps SIFT's values exactly).",
)
@click.option("--save-matches", is_flag=True, help="Also write each verified pair's inlier keypoint indices.")
@progress_option(quiet_short=True)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a file at OUTPUT or --cache that featmatch did not write (otherwise refused, untouched). "
    "An input is never overwritten.",
)
def batch_command(
    images,
    pairs_spec,
    output,
    descriptor,
    cache,
    workers,
    backend,
    ray_address,
    limit,
    max_keypoints,
    max_side,
    ratio,
    mutual,
    method,
    threshold,
    min_inliers,
    device,
    precision,
    cache_dtype,
    save_matches,
    progress,
    force,
):
    """Match many image pairs: each image's features are computed once and cached.

    IMAGES is a folder (searched recursively) or a text file with one image path per line.
    Each pair's result (matches, inliers, homography or null with a reason) is appended to
    OUTPUT as one JSON line as soon as it is done; running the same command again skips the
    finished pairs, so an interrupted run goes on where it stopped.

    The defaults differ from match and stitch (hardnet, --device auto) on purpose: batch
    runs --workers single-threaded processes, one per core, and on a CPU the CNN costs
    several times SIFT's time per image (docs/speed.md), so --descriptor sift; and one GPU
    would be shared by every worker, so --device cpu. Pass -d hardnet [--device cuda
    --workers 1] for the learned descriptor.

    \b
    Examples:
      featmatch batch photos/ --pairs shortlist:10 -o results.jsonl
      featmatch batch list.txt --pairs pairs.txt -o results.jsonl --workers 8
      featmatch batch photos/ -o results.jsonl --backend ray --ray-address auto
      featmatch batch examples/river -o river.jsonl -d hardnet
    \b
    Exit codes: 0 the run finished (pairs without a homography are results, not failures),
    2 bad usage or input (or --backend ray without Ray installed, a Ray cluster that
    cannot be reached or refuses the token, or one that lost the run's work: run the same
    command again to continue), 130 interrupted.
    """
    from .api import batch

    run = batch(
        images,
        pairs_spec,
        output,
        descriptor=descriptor,
        cache=cache,
        workers=workers,
        backend=backend,
        ray_address=ray_address,
        limit=limit,
        progress=show_progress(progress),
        max_keypoints=max_keypoints,
        max_side=max_side,
        ratio=ratio,
        mutual=mutual,
        method=method,
        threshold=threshold,
        min_inliers=min_inliers,
        device=device,
        precision=precision,
        cache_dtype=cache_dtype,
        save_matches=save_matches,
        force=force,
    )
    stop = threading.Event()
    try:
        with _termination_as_interrupt(stop):
            for _ in run:
                if stop.is_set():  # the signal's KeyboardInterrupt was swallowed somewhere
                    raise KeyboardInterrupt
            if stop.is_set():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        run.close()  # stops the workers; what finished is in OUTPUT
        _report(run, pairs_spec, output, limit)
        raise
    _report(run, pairs_spec, output, limit)


@contextlib.contextmanager
def _termination_as_interrupt(stop: threading.Event):
    """SIGTERM (``kill``, a job scheduler's timeout) stops the run like Ctrl-C does.

    The worker pool is then shut down properly (no orphaned processes, no leaked semaphores)
    and every finished pair is already in OUTPUT. A second signal ends the process at once.
    The handler also sets ``stop``: a KeyboardInterrupt raised while Python runs a finalizer or
    a weakref callback is printed and dropped ("Exception ignored in ..."), so the caller checks
    ``stop`` after each result too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    def unraisable(info):  # the dropped interrupt is not an error worth a traceback
        if not (stop.is_set() and isinstance(info.exc_value, KeyboardInterrupt)):
            previous_hook(info)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook


def _report(run, pairs_spec: str, output: str, limit: int | None) -> None:
    for message in run.warnings:
        click.echo(f"featmatch: warning: {printable(message)}", err=True)
    for name, why in sorted(run.failed.items()):
        click.echo(f"featmatch: warning: skipped image {printable(name)}: {printable(why)}", err=True)
    if run.summary is not None:
        _print_summary(run.summary, pairs_spec, output, limit)


def _print_summary(s, pairs_spec: str, output: str, limit: int | None) -> None:
    cached = f", {s.features_cached} from cache" if s.features_cached else ""
    failed = f" ({s.images_failed} unusable)" if s.images_failed else ""
    click.echo(f"images {s.images}{failed}: features {s.features_computed} computed{cached}")
    click.echo(
        f"pairs {s.pairs} ({pairs_spec}): skipped {s.skipped} finished pairs, matched {s.computed} "
        f"in {s.match_seconds:.1f} s ({s.pairs_per_second:.1f} pairs/s)"
    )
    click.echo(
        f"verified {s.verified}, no homography {s.no_homography}, failed {s.errors}; wrote {output}  "
        f"(total {s.seconds:.1f} s)"
    )
    if not s.complete and s.pairs == 0 and s.computed == 0:
        click.echo("stopped (interrupted) before the shortlist was made; run the same command again to continue", err=True)
    elif not s.complete:
        left = s.pairs - s.skipped - s.computed
        why = f"--limit {limit}" if limit is not None and s.computed >= limit else "interrupted"
        click.echo(f"stopped ({why}): {max(left, 0)} pairs left; run the same command again to continue", err=True)
