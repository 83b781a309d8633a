"""``featmatch stitch``: a thin click layer over :func:`featmatch.stitching.stitch`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np

from ..detect import C_INT_MAX
from ..errors import printable
from ..options import (
    FiniteFloatRange,
    descriptor_option,
    max_tilt_option,
    pipeline_options,
    progress_option,
    show_progress,
)
from .config import (
    BLENDS,
    DEFAULT_BLEND,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_PAIRS_PER_IMAGE,
    DEFAULT_PROJECTION,
    DEFAULT_REGISTER_MEGAPIXELS,
    DEFAULT_RETRY_TILT,
    DEFAULT_SEAM,
    DEFAULT_STITCH_DESCRIPTOR,
    DEFAULT_STITCH_KEYPOINTS,
    PROJECTIONS,
    SEAMS,
    StitchWarning,
)


def _expand(paths: tuple[str, ...], output: str | None = None) -> list[str]:
    """Files are kept as given; a folder gives the images its ``image_list.txt`` names, in that
    order, else its images in natural order (:mod:`featmatch.folders`), without ``output``
    (a panorama written into the folder by an earlier run is not an input).

    Raises:
        StitchInputError: a folder holds no image.
    """
    from ..folders import IMAGE_SUFFIXES, folder_images
    from .config import StitchInputError

    out = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            out.append(p)
            continue
        images = folder_images(path, exclude=[output] if output else ())
        if not images:
            raise StitchInputError(f"no images found in {printable(p)} (looked for {', '.join(IMAGE_SUFFIXES)})")
        out.extend(str(f) for f in images)
    return out


@click.command("stitch")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The panorama (PNG/JPEG).")
@descriptor_option(DEFAULT_STITCH_DESCRIPTOR)
@pipeline_options(
    min_inliers=20,
    min_inliers_help="Fewest inliers for two images to count as overlapping.",
    max_keypoints=DEFAULT_STITCH_KEYPOINTS,
)
@click.option(
    "--projection",
    type=click.Choice(PROJECTIONS),
    default=DEFAULT_PROJECTION,
    show_default=True,
    help="auto: the rotating-camera model (cylindrical; spherical for a tall view) when it fits the matches about "
    "as well as free homographies, planar for flat scenes such as scans and maps.",
)
@click.option(
    "--blend",
    type=click.Choice(BLENDS),
    default=DEFAULT_BLEND,
    show_default=True,
    help="multiband: blend low frequencies wide and details narrow (no visible seams); feather: a linear "
    "ramp across the overlap; none: each pixel from one image (hard seams).",
)
@click.option(
    "--crop/--no-crop",
    default=True,
    show_default=True,
    help="Crop to the largest rectangle of valid pixels (--no-crop keeps everything; PNG gets an alpha channel).",
)
@click.option(
    "--exposure/--no-exposure",
    default=True,
    show_default=True,
    help="Make colours agree across overlaps (exposure, white balance, vignetting).",
)
@click.option(
    "--seam",
    type=click.Choice(SEAMS),
    default=DEFAULT_SEAM,
    show_default=True,
    help="dp / graphcut: seams where the images agree, around edges and things that moved; voronoi: "
    "the middle of each overlap.",
)
@click.option(
    "--focal", type=FiniteFloatRange(min=0.0, min_open=True), help="Focal length in pixels (default: estimated)."
)
@click.option(
    "--max-megapixels",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_MAX_MEGAPIXELS,
    help="Refuse (exit 3) a panorama canvas larger than this [default: no cap; a canvas only a wrong model "
    "makes is refused anyway].",
)
@click.option(
    "--output-megapixels",
    type=FiniteFloatRange(min=0.0, min_open=True),
    help="Resolution of the panorama: its canvas's area before the crop [default: the inputs' resolution].",
)
@click.option(
    "--scale",
    type=FiniteFloatRange(min=0.0, min_open=True),
    help="Resolution of the panorama relative to the inputs' (instead of --output-megapixels).",
)
@click.option(
    "--register-megapixels",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_REGISTER_MEGAPIXELS,
    show_default=True,
    help="Find and match keypoints in each image downscaled to at most this many megapixels "
    "(the panorama keeps the full resolution); larger is slower and was not more accurate "
    "against ground truth (docs/stitching.md).",
)
@click.option(
    "--full-resolution-registration",
    is_flag=True,
    help="Register at full resolution (up to --max-side) instead of --register-megapixels.",
)
@click.option(
    "--pairs-per-image",
    type=click.IntRange(1, C_INT_MAX),
    default=DEFAULT_PAIRS_PER_IMAGE,
    show_default=True,
    help="Above 8 images, match each image with its K best candidates from a FAISS vote.",
)
@max_tilt_option(
    "--retry-tilt",
    default=DEFAULT_RETRY_TILT,
    help="Images that overlap nothing are described again with simulated oblique views up to this tilt "
    "(ASIFT; 4 = up to 75 degrees of viewpoint change) and matched again; 1 = never.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (homographies, placed/dropped, pair graph)."
)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the seam layout and pair graph picture.")
@progress_option()
def stitch_command(
    images,
    output,
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
    projection,
    blend,
    crop,
    exposure,
    seam,
    focal,
    max_megapixels,
    output_megapixels,
    scale,
    register_megapixels,
    full_resolution_registration,
    pairs_per_image,
    retry_tilt,
    as_json,
    plot,
    progress,
):
    """Stitch overlapping photos IMAGES... (files or folders) into one panorama.

    A folder gives the images its image_list.txt names, in that order, else all its images in
    natural order (2.jpg before 10.jpg). Images that overlap nothing are left out with a
    warning (and listed with --json).

    \b
    Examples:
      featmatch stitch examples/river -o river.jpg --plot layout.png
      featmatch stitch a.jpg b.jpg c.jpg -o pano.png --projection cylindrical --no-crop
      featmatch stitch big/*.jpg -o pano.jpg --output-megapixels 20

    \b
    Exit codes: 0 written, 3 no pair of images overlaps (or the canvas would exceed
    --max-megapixels, or is so large that the model must be wrong), 2 bad usage or unreadable input (fewer than 2 images, missing file,
    missing model), 1 a bug.
    """
    from ..detect import DetectConfig
    from ..geometry import GeometryConfig
    from ..match import MatchConfig
    from ..pipeline import Matcher
    from ..plot import check_not_an_input, check_output_path, remove_stale_temporaries, write_image
    from .config import StitchConfig, StitchInputError
    from .stitcher import stitch

    files = _expand(images, output)
    if len(files) < 2:
        raise StitchInputError(f"stitching needs at least 2 images, got {len(files)}")
    check_output_path(output, "-o")  # before any work: a bad output path must not cost a whole stitch
    check_not_an_input(output, "-o", files)
    if plot:
        check_output_path(plot, "--plot")
        check_not_an_input(plot, "--plot", files + [output])
    for leftover in remove_stale_temporaries(output) + (remove_stale_temporaries(plot) if plot else []):
        click.echo(f"featmatch: warning: removed '{printable(leftover)}', left by an interrupted write", err=True)
    matcher = Matcher(
        descriptor,
        detect=DetectConfig(max_keypoints=max_keypoints, max_side=max_side),
        match=MatchConfig(ratio=ratio, mutual=mutual),
        geometry=GeometryConfig(method=method, threshold=threshold, min_inliers=min(min_inliers, 12)),
        device=device,
        precision=precision,
    )
    config = StitchConfig(
        projection=projection,
        blend=blend,
        crop=crop,
        exposure=exposure,
        seam=seam,
        focal=focal,
        max_megapixels=max_megapixels,
        output_megapixels=output_megapixels,
        scale=scale,
        register_megapixels=None if full_resolution_registration else register_megapixels,
        pairs_per_image=pairs_per_image,
        min_inliers=min_inliers,
        retry_tilt=retry_tilt,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StitchWarning)
        result = stitch(files, config=config, matcher=matcher, progress=show_progress(progress))
    for w in caught:
        if issubclass(w.category, StitchWarning):
            click.echo(f"featmatch: warning: {w.message}", err=True)
    pano = result.panorama
    if not crop and str(output).lower().endswith(".png"):  # uncovered canvas is transparent
        pano = np.dstack([pano, result.valid.astype(np.uint8) * 255])
    write_image(output, pano)
    if plot:
        from .plot import draw_layout

        write_image(plot, draw_layout(result))
        click.echo(f"wrote {plot}", err=as_json)  # on stderr with --json: stdout stays one JSON object
    if as_json:
        click.echo(f"wrote {output}", err=True)
        click.echo(json.dumps({"output": str(output), "descriptor": descriptor, **result.to_json()}))
    else:
        h, w = result.panorama.shape[:2]
        click.echo(
            f"wrote {output}: {w}x{h} {result.projection} panorama of {len(result.placed)}/{len(files)} images "
            f"(reference {result.names[result.reference]}) in {result.timings_ms.get('total', 0) / 1000:.1f} s"
        )
        if result.dropped:
            click.echo("dropped (no overlap): " + ", ".join(result.names[v] for v in result.dropped))
