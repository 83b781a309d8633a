"""``featmatch stitch``: a thin click layer over :func:`featmatch.stitching.stitch`."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import click

from ..detect import C_INT_MAX
from ..options import FiniteFloatRange, descriptor_option, max_tilt_option, pipeline_options
from .config import (
    BLENDS,
    DEFAULT_BLEND,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_PAIRS_PER_IMAGE,
    DEFAULT_PROJECTION,
    DEFAULT_RETRY_TILT,
    DEFAULT_SEAM,
    DEFAULT_STITCH_DESCRIPTOR,
    PROJECTIONS,
    SEAMS,
    StitchWarning,
)

#: File name endings taken from a folder given as IMG.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp")
#: A folder's panorama order, when it has this file (one image name a line, as in the
#: panoramas-image-stitching sets, whose lines also carry a focal length that is ignored).
IMAGE_LIST = "image_list.txt"


def _natural_key(path: Path) -> list:
    """Sort key that orders ``2.jpg`` before ``10.jpg`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _expand(paths: tuple[str, ...]) -> list[str]:
    """Files are kept as given; a folder gives the files its ``image_list.txt`` names, in that
    order (first word of each line; ``#`` starts a comment), else its images in natural order."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            out.append(p)
        elif (path / IMAGE_LIST).is_file():
            lines = (ln.split("#")[0].split() for ln in (path / IMAGE_LIST).read_text().splitlines())
            out.extend(str(path / words[0]) for words in lines if words)
        else:
            images = [f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
            out.extend(str(f) for f in sorted(images, key=_natural_key))
    return out


@click.command("stitch")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The panorama (PNG/JPEG).")
@descriptor_option(DEFAULT_STITCH_DESCRIPTOR)
@pipeline_options(min_inliers=20, min_inliers_help="Fewest inliers for two images to count as overlapping.")
@click.option(
    "--projection",
    type=click.Choice(PROJECTIONS),
    default=DEFAULT_PROJECTION,
    show_default=True,
    help="auto: planar for scans and narrow sets, cylindrical when the cameras turn further than 50 degrees.",
)
@click.option(
    "--blend",
    type=click.Choice(BLENDS),
    default=DEFAULT_BLEND,
    show_default=True,
    help="multiband: blend low frequencies wide and details narrow (no visible seams); feather: a linear "
    "ramp across the overlap; none: each pixel from one image (hard seams).",
)
@click.option("--crop/--no-crop", default=False, show_default=True, help="Crop to the largest valid rectangle.")
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
    show_default=True,
    help="Refuse (exit 3) a panorama canvas larger than this, e.g. from a runaway homography.",
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
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [default: when a terminal].")
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
      featmatch stitch a.jpg b.jpg c.jpg -o pano.jpg --projection cylindrical --crop

    \b
    Exit codes: 0 written, 3 no pair of images overlaps (or the canvas would exceed
    --max-megapixels), 2 bad usage or unreadable input (fewer than 2 images, missing file,
    missing model), 1 a bug.
    """
    from ..detect import DetectConfig
    from ..geometry import GeometryConfig
    from ..match import MatchConfig
    from ..pipeline import Matcher
    from ..plot import check_output_path, write_image
    from .config import StitchConfig, StitchInputError
    from .stitcher import stitch

    files = _expand(images)
    if len(files) < 2:
        raise StitchInputError(f"stitching needs at least 2 images, got {len(files)}")
    check_output_path(output, "-o")  # before any work: a bad output path must not cost a whole stitch
    if plot:
        check_output_path(plot, "--plot")
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
        pairs_per_image=pairs_per_image,
        min_inliers=min_inliers,
        retry_tilt=retry_tilt,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StitchWarning)
        result = stitch(files, config=config, matcher=matcher, progress=progress)
    for w in caught:
        if issubclass(w.category, StitchWarning):
            click.echo(f"featmatch: warning: {w.message}", err=True)
    write_image(output, result.panorama)
    if plot:
        from .plot import draw_layout

        write_image(plot, draw_layout(result))
    if as_json:
        click.echo(json.dumps({"output": str(output), "descriptor": descriptor, **result.to_json()}))
    else:
        h, w = result.panorama.shape[:2]
        click.echo(
            f"{output}: {w}x{h} {result.projection} panorama of {len(result.placed)}/{len(files)} images "
            f"(reference {result.names[result.reference]}) in {result.timings_ms.get('total', 0) / 1000:.1f} s"
        )
        if result.dropped:
            click.echo("dropped (no overlap): " + ", ".join(result.names[v] for v in result.dropped))
