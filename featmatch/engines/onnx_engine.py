"""The ``onnx`` engine: ONNX Runtime on the CPU, from the exports of ``featmatch export``.

One ``InferenceSession`` per file per process (cached), all graph optimizations on (the QDQ
nodes of the int8 files become integer ``QLinearConv`` kernels), one intra-op thread per
usable core. Imports neither torch nor kornia.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import ModelNotFoundError
from ..weights import onnx_path, sha256_of, weight_path
from .cpuinfo import usable_cores

logger = logging.getLogger(__name__)

_SESSIONS: dict = {}
_LOCK = threading.Lock()
#: Intra-op threads of sessions built from now on (None: the usable cores); see :func:`set_threads`.
_THREADS: int | None = None


def set_threads(n: int | None) -> int | None:
    """Cap the intra-op threads of the sessions built from now on (``featmatch batch`` workers); returns
    the previous cap. None: one thread per usable core."""
    global _THREADS
    old, _THREADS = _THREADS, n
    return old


def _session(path: Path, threads: int, cached: bool = True):
    """An ONNX Runtime session of ``path`` (one per file, size and thread count per process)."""
    import onnxruntime as ort

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, threads)
    with _LOCK:
        if cached and key in _SESSIONS:
            return _SESSIONS[key]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged file: ONNX Runtime's text is long and names the path again
            text = str(exc).lower()
            reason = "not a valid ONNX file, damaged?" if "protobuf" in text else "ONNX Runtime refuses it"
            raise ModelNotFoundError(
                f"ONNX model {path} cannot be loaded ({reason}); rewrite it with `featmatch export`"
            ) from None
        if cached:
            _SESSIONS[key] = sess
        return sess


class OnnxEngine:
    """Describe patches with one ONNX file.

    Args:
        path: the ``.onnx`` file.
        precision: ``fp32`` or ``int8`` (a label; the file decides the arithmetic).
        batch_size: patches per ``run``.
        threads: intra-op threads (default: the usable cores).
        variant: the file's variant (``fp32``, ``int8``, ``int8-w7``).
        cached: reuse the process's session of this file.
    """

    name = "onnx"
    device = "cpu"

    def __init__(
        self,
        path: Path,
        precision: str,
        batch_size: int = 256,
        threads: int | None = None,
        variant: str | None = None,
        cached: bool = True,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(f"ONNX model {self.path} does not exist; make it with `featmatch export`")
        self.precision = precision
        self.variant = variant or precision
        self.batch_size = batch_size
        self.threads = threads or _THREADS or usable_cores()
        self._sess = _session(self.path, self.threads, cached)
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or list(inputs[0].shape[1:]) != [1, 32, 32]:
            raise ModelNotFoundError(f"ONNX model {self.path} is not a featmatch descriptor (unexpected inputs)")
        self._in, self._out = inputs[0].name, outputs[0].name

    @classmethod
    def for_model(cls, model_name: str, choice, batch_size: int, model=None, weights_sha256=None) -> OnnxEngine:
        """The engine of ``models/<model_name>.<variant>.onnx``, checked against the weights' digest
        (``weights_sha256`` when the caller has just computed it, else the ``.pt`` is hashed here)."""
        path = onnx_path(model_name, choice.variant)
        engine = cls(path, choice.precision, batch_size, variant=choice.variant)
        meta = engine._sess.get_modelmeta().custom_metadata_map
        recorded = meta.get("featmatch.weights_sha256")
        manifest = path.with_name(f"{model_name}.onnx.json")
        if manifest.is_file():  # the file itself must be the one the export wrote (not damaged)
            try:
                want = json.loads(manifest.read_text())["files"][choice.variant]["sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                want = None
            if want is not None and want != sha256_of(path):
                raise ModelNotFoundError(f"ONNX model {path} does not match its recorded sha256; the file is damaged")
        if recorded != (weights_sha256 or sha256_of(weight_path(model_name))):
            raise ModelNotFoundError(
                f"ONNX model {path} was exported from other weights than {weight_path(model_name)}; "
                f"run `featmatch export {model_name}`"
            )
        return engine

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Shape: ``(N, 1, 32, 32)`` float32 -> ``(N, 128)`` float32 unit vectors."""
        n = patches.shape[0]
        if n == 0:
            return np.zeros((0, 128), np.float32)
        x = np.ascontiguousarray(patches, dtype=np.float32)
        if n <= self.batch_size:
            return self._sess.run([self._out], {self._in: x})[0]
        out = np.empty((n, 128), np.float32)
        for s in range(0, n, self.batch_size):
            out[s : s + self.batch_size] = self._sess.run([self._out], {self._in: x[s : s + self.batch_size]})[0]
        return out
