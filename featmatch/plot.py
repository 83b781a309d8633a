"""Pictures of a result: the match plot and the warp overlay (OpenCV only)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import FeatmatchError, os_cause, printable

GREEN = (60, 200, 60)
RED = (40, 40, 230)
#: Longest side of a drawn image; larger inputs are shrunk for the plot only.
PLOT_MAX_SIDE = 1600


def _fit(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    s = min(1.0, max_side / max(img.shape[:2]))
    if s < 1.0:
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return img, s


def draw_matches(
    color1: np.ndarray,
    color2: np.ndarray,
    xy1: np.ndarray,
    xy2: np.ndarray,
    pairs: np.ndarray,
    inliers: np.ndarray,
    max_outliers: int = 300,
) -> np.ndarray:
    """Both images side by side, inlier matches in green and (up to ``max_outliers``) outliers in red."""
    a, sa = _fit(color1, PLOT_MAX_SIDE // 2)
    b, sb = _fit(color2, PLOT_MAX_SIDE // 2)
    h = max(a.shape[0], b.shape[0])
    canvas = np.zeros((h, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] :] = b
    p1 = (xy1[pairs[:, 0]] + 0.5) * sa - 0.5 if len(pairs) else np.zeros((0, 2))
    p2 = (xy2[pairs[:, 1]] + 0.5) * sb - 0.5 + [a.shape[1], 0] if len(pairs) else np.zeros((0, 2))
    out_idx = np.nonzero(~inliers)[0][:max_outliers]
    for idx, colour, width in ((out_idx, RED, 1), (np.nonzero(inliers)[0], GREEN, 1)):
        for i in idx:
            q1 = tuple(int(round(v)) for v in p1[i])
            q2 = tuple(int(round(v)) for v in p2[i])
            cv2.line(canvas, q1, q2, colour, width, cv2.LINE_AA)
            cv2.circle(canvas, q1, 2, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, q2, 2, colour, -1, cv2.LINE_AA)
    label = f"{int(inliers.sum())} inliers / {len(pairs)} matches"
    cv2.putText(canvas, label, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(canvas, label, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def warp_overlay(color1: np.ndarray, color2: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Image 1 warped into image 2's frame and blended 50/50 over image 2 (image 2's size)."""
    h, w = color2.shape[:2]
    warped = cv2.warpPerspective(color1, H, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.ones(color1.shape[:2], np.uint8), H, (w, h), flags=cv2.INTER_NEAREST) > 0
    out = color2.copy()
    out[valid] = (0.5 * warped[valid].astype(np.float32) + 0.5 * color2[valid].astype(np.float32)).astype(np.uint8)
    return out


#: Extension -> whether OpenCV can encode a colour image with it (probed once per extension).
_ENCODABLE: dict[str, bool] = {}


def _can_encode(ext: str) -> bool:
    ext = ext.lower()
    if ext not in _ENCODABLE:
        try:  # a 64x64 colour image: what every output of featmatch is (JPEG 2000 needs > 32 px)
            ok, _ = cv2.imencode(ext, np.zeros((64, 64, 3), np.uint8))
        except cv2.error:
            ok = False
        _ENCODABLE[ext] = bool(ok)
    return _ENCODABLE[ext]


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that an image can be written to ``path``.

    Checks that it is not a folder, that its folder exists and takes new files (a temporary
    file is created and removed there), that an existing file there is writable, and that
    OpenCV can encode a colour image with its extension.

    Args:
        path: where the image will be written (any file name the OS takes, UTF-8 or not).
        what: the option, for the message (``--plot``, ``--warp``, ``-o``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FeatmatchError: (exit code 2) the one-line reason.
    """
    path = Path(path)
    shown = printable(path)
    folder = path.parent
    if path.is_dir():
        raise FeatmatchError(f"cannot write {what} '{shown}': it is a folder; give a file name such as out.png")
    if not _can_encode(path.suffix):
        ext = f"extension '{printable(path.suffix)}'" if path.suffix else "a name without an extension"
        raise FeatmatchError(
            f"cannot write {what} '{shown}': OpenCV cannot encode a colour image with {ext}; use .png or .jpg"
        )
    if not folder.is_dir():
        why = "does not exist" if not folder.exists() else "is not a folder"
        raise FeatmatchError(f"cannot write {what} '{shown}': folder '{printable(folder)}' {why}")
    if path.exists() and not os.access(path, os.W_OK):
        raise FeatmatchError(f"cannot write {what} '{shown}': the file exists and is read-only")
    try:
        fd, probe = _create_temporary(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FeatmatchError(
            f"cannot write {what} '{shown}': folder '{printable(folder)}' is not writable ({exc.strerror or exc})"
        ) from None
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` (same folder, so that a rename onto ``path`` is atomic)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp  # umask applies
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")  # pragma: no cover


def write_bytes_atomically(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Readers see the old file or the complete new one, never a part; a failure leaves no file.

    Raises:
        OSError: the folder is not writable, the disk is full, ...
    """
    path = Path(path)
    with _termination_as_interrupt():  # SIGTERM mid-write: the temporary file is removed too
        fd, tmp = _create_temporary(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def _termination_as_interrupt():
    """SIGTERM raises KeyboardInterrupt here (the CLI's exit code 130), so that cleanup runs.

    Only where SIGTERM would otherwise end the process at once (its default action, in the
    main thread): a handler someone installed (``featmatch batch`` has one) is left alone.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: A temporary file beside an output that is older than this is left over from a killed write.
STALE_TEMPORARY_S = 60.0


def remove_stale_temporaries(path: str | os.PathLike, older_than: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove the temporary files a killed write of ``path`` left beside it (``.NAME.xxxxxxxx.tmp``).

    A write that is killed outright (``kill -9``, a power cut) cannot remove its temporary
    file; the next write to the same path does, when it is older than ``older_than`` seconds
    (a younger one may belong to a write running now). The output itself is never half
    written: the rename is atomic.

    Returns:
        The files removed (the CLI names each in a warning).
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp$")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def check_not_an_input(target: str | None, option: str, inputs: list[str]) -> None:
    """Refuse an output path that is one of the inputs (``stitch a.jpg b.jpg -o a.jpg``), before any work.

    Raises:
        FeatmatchError: (exit code 2) naming the option and the input.
    """
    if not target:
        return

    def identity(p: str) -> tuple:
        try:
            st = os.stat(p)
            return ("inode", st.st_dev, st.st_ino)
        except OSError:
            return ("path", os.path.realpath(p))

    mine = identity(target)
    for p in inputs:
        if identity(p) == mine:
            raise FeatmatchError(
                f"{option} '{printable(target)}' is the input image '{printable(p)}': featmatch never writes over "
                f"its inputs; give another {option}"
            )


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode an image in memory and write it atomically (temporary file + rename).

    OpenCV only encodes; Python writes the bytes, so any file name the OS accepts works
    (OpenCV's own ``imwrite`` crashes on names that are not UTF-8), and a failed write never
    leaves a half-written file.

    Raises:
        FeatmatchError: the path is unusable (see :func:`check_output_path`), the image cannot
            be encoded in that format, or the write failed (the message says why).
    """
    path = check_output_path(path)
    shown = printable(path)
    try:
        ok, buf = cv2.imencode(path.suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        h, w = image.shape[:2]
        raise FeatmatchError(f"cannot write '{shown}': OpenCV cannot encode this {w}x{h} image as '{path.suffix}'")
    try:
        write_bytes_atomically(path, memoryview(buf.reshape(-1)))
    except OSError as exc:
        raise FeatmatchError(f"cannot write '{shown}': {os_cause(exc)}") from None
