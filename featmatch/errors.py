"""The exception hierarchy and the exit codes the CLI maps them to.

Every error that a user can cause derives from :class:`FeatmatchError` and carries the exit
code the command line reports for it, so that the CLI has one place to turn an exception into
a one-line message. Anything else that escapes is a bug (exit code 1).
"""

from __future__ import annotations

#: The documented exit codes of every ``featmatch`` command.
EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_NO_HOMOGRAPHY = 3


def printable(text: object) -> str:
    """``text`` as one printable line: what error messages show of paths and names.

    Control characters (a newline in a file name, an escape sequence) are shown escaped
    (``\\n``, ``\\x1b``), and the bytes of a file name that is not valid UTF-8 (which Python
    decodes with ``surrogateescape``) as ``\\xff``; everything else is kept as it is.
    """
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


class FeatmatchError(Exception):
    """Base class of the errors a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_INPUT


class ImageReadError(FeatmatchError):
    """An image could not be read or is unusable (missing, not an image, too small, ...)."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot use image '{printable(path)}': {reason}")


class ConfigError(FeatmatchError):
    """An option has an invalid value (unknown descriptor, ratio out of range, ...)."""


class DatasetError(FeatmatchError):
    """A dataset folder is missing, empty or not in a known layout, or a ground-truth file is unreadable."""


class ModelNotFoundError(FeatmatchError):
    """The weights of a learned descriptor are not in the models folder."""


class DeviceError(FeatmatchError):
    """A device was requested that this machine does not have (e.g. ``cuda`` without a GPU)."""


class NotEnoughMatchesError(FeatmatchError):
    """Too few keypoints, matches or inliers to estimate a homography."""

    exit_code = EXIT_NO_HOMOGRAPHY


class DegenerateHomographyError(FeatmatchError):
    """A homography was estimated but failed a sanity check (flip, fold, absurd scale)."""

    exit_code = EXIT_NO_HOMOGRAPHY
