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


class FileSystemError(FeatmatchError):
    """The operating system refused a read or a write: a full disk, a read-only disk, a
    permission, too many open files. The message names the path and the cause in one line."""

    def __init__(self, path: object, cause: BaseException | int | str, doing: str = "write", hint: str = ""):
        self.path = str(path)
        self.errno = cause if isinstance(cause, int) else getattr(cause, "errno", None)
        self.cause = os_cause(cause)
        super().__init__(f"cannot {doing} '{printable(path)}': {self.cause}" + (f"; {hint}" if hint else ""))


#: errno values that describe the machine's state (not damaged data): the same command works
#: again once the disk has space, is writable, or the process may open more files.
_OS_CONDITIONS = {
    "ENOSPC": "no space left on the disk (the disk is full)",
    "EDQUOT": "disk quota exceeded",
    "EROFS": "the disk is read-only",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EMFILE": "too many open files (raise 'ulimit -n')",
    "ENFILE": "too many open files in the system",
    "EFBIG": "file too large for this file system (or 'ulimit -f')",
    "EIO": "input/output error (a failing disk or a lost network mount?)",
}


def os_condition(code: int | None) -> str | None:
    """The user-facing cause of an errno that describes the machine's state, else None."""
    import errno as errno_module

    name = errno_module.errorcode.get(code) if isinstance(code, int) else None
    return _OS_CONDITIONS.get(name) if name else None


def os_cause(cause: BaseException | int | str) -> str:
    """One line saying why the OS refused: a known condition in plain words, else its own text."""
    if isinstance(cause, str):
        return cause
    code = cause if isinstance(cause, int) else getattr(cause, "errno", None)
    known = os_condition(code)
    if known:
        return known
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return " ".join(str(cause).split()) or type(cause).__name__


def check_type(name: str, value: object, kind: str) -> None:
    """Refuse, before any work, an argument of the wrong type (``"0.8"`` for a number, ``True``
    or ``1000.5`` for a count).

    Args:
        name: the argument, as the caller spelled it.
        kind: ``int`` (a whole number, not a bool), ``number`` (int or float, not a bool),
            ``bool`` or ``str``.

    Raises:
        ConfigError: naming ``name``, what it takes, and what it got.
    """
    import numbers

    if kind == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"
        want = "a whole number"
    elif kind == "number":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"
        want = "a number"
    elif kind == "bool":
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        want = "True or False"
    elif kind == "str":
        ok = isinstance(value, str)
        want = "a string"
    else:  # pragma: no cover - a programming error
        raise ValueError(f"unknown kind {kind!r}")
    if not ok:
        raise ConfigError(f"{name} must be {want}, got {type(value).__name__} {printable(repr(value))[:60]}")
