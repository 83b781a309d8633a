"""``featmatch bench``: speed and memory of featmatch against OpenCV and kornia, measured in one run.

Three parts, each printing ratios of numbers measured side by side on the same machine:

- ``describe``: patches/s of featmatch's HardNet inference path
  (:meth:`featmatch.descriptors.CNNDescriptor.describe_patches`: BN folded, channels-last, bf16
  where the CPU has it) against kornia's ``kornia.feature.HardNet`` loaded with the same
  state dict, in fp32, on the same real patches.
- ``pipeline``: whole ``match`` processes on two real images: ``featmatch match`` (sift and
  hardnet) against ``benchmarks/opencv_sift_match.py`` and ``benchmarks/kornia_hardnet_match.py``;
  wall time and peak resident memory per process (``os.wait4``), median of several runs,
  plus featmatch's per-stage times (its ``--json`` ``timings_ms``).
- ``knn``: k=2 nearest neighbours alone: FAISS (featmatch's matcher) against OpenCV's
  ``BFMatcher.knnMatch`` and chunked ``torch.cdist`` + ``topk``.

Everything heavy is imported inside the functions; the module itself imports nothing costly.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, FeatmatchError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: Competitor scripts (in the source checkout; not part of the installed package).
BENCHMARKS_DIR = REPO / "benchmarks"
#: The real pair of the pipeline benchmark (test split).
DEFAULT_IMAGES = (
    REPO.parent / "shared" / "data" / "vlfeat-pairs" / "river1.jpg",
    REPO.parent / "shared" / "data" / "vlfeat-pairs" / "river2.jpg",
)


@dataclass(frozen=True)
class BenchConfig:
    """What ``featmatch bench`` measures.

    Attributes:
        device: ``cpu`` or ``cuda`` for the CNNs and the torch search.
        batch_sizes: patch batch sizes of the descriptor benchmark.
        describe_repeats: timed calls per batch size (median; one untimed warm-up before).
        images: the two images of the pipeline benchmark.
        keypoints: keypoints per image in the pipeline benchmark.
        pipeline_runs: whole-process runs per contender (median).
        knn_sizes: descriptor counts (query = base) of the matching benchmark.
        knn_repeats: timed searches per size up to 10k (one above 10k).
        torch_chunk_bytes: the largest distance block ``torch.cdist`` may hold at once.
        bf_max: largest size OpenCV's BFMatcher is run on (it is the slowest; None = all).
    """

    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (256, 1024)
    describe_repeats: int = 3
    images: tuple[Path, Path] = DEFAULT_IMAGES
    keypoints: int = 4000
    pipeline_runs: int = 3
    knn_sizes: tuple[int, ...] = (1000, 5000, 10000, 50000)
    knn_repeats: int = 3
    torch_chunk_bytes: int = 512 * 2**20
    bf_max: int | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got '{self.device}'")
        if min(self.batch_sizes + self.knn_sizes) < 1 or self.keypoints < 1:
            raise ConfigError("batch sizes, knn sizes and keypoints must be positive")
        if min(self.describe_repeats, self.pipeline_runs, self.knn_repeats) < 1:
            raise ConfigError("repeats must be at least 1")

    @classmethod
    def quick(cls, device: str = "cpu") -> BenchConfig:
        """A seconds-long plumbing run: tiny batches, few keypoints, one run each."""
        return cls(
            device=device,
            batch_sizes=(64,),
            describe_repeats=1,
            keypoints=300,
            pipeline_runs=1,
            knn_sizes=(500,),
            knn_repeats=1,
        )

    def with_repeats(self, n: int) -> BenchConfig:
        return replace(self, describe_repeats=n, pipeline_runs=n, knn_repeats=n)


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# weights


def _hardnet_weights(tmp: Path) -> tuple[object, Path, str, bool]:
    """The HardNet to benchmark: ``models/hardnet.pt`` if present, else a seeded random one.

    Returns:
        ``(model, models_folder, note, trained)``; the folder holds ``hardnet.pt`` (and its ONNX
        exports, when it has them) for the subprocesses.
    """
    import torch

    from ..network import HardNet, load_weights, save_weights
    from ..weights import models_dir, weight_path

    if weight_path("hardnet").is_file():
        note = f"trained weights {weight_path('hardnet')}"
        return load_weights("hardnet"), models_dir(), note, True
    torch.manual_seed(0)
    net = HardNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so that BN folding does real work
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    save_weights(net, tmp / "hardnet.pt", half=False)
    note = "models/hardnet.pt does not exist yet: a SEEDED RANDOM HardNet (speed only, matches meaningless)"
    return net, tmp, note, False


def real_patches(image: Path, n: int) -> np.ndarray:
    """``(n, 1, 32, 32)`` float32 patches of real keypoints (tiled when the image has fewer)."""
    from ..detect import DetectConfig, detect
    from ..imageio import load_image
    from ..patches import patches_for

    kps = detect(load_image(image).gray, DetectConfig(max_keypoints=n))
    patches = patches_for(kps)
    if len(patches) == 0:
        raise FeatmatchError(f"no keypoints in {image} for the descriptor benchmark")
    reps = -(-n // len(patches))
    return np.ascontiguousarray(np.concatenate([patches] * reps)[:n])


# ----------------------------------------------------------------------------------------------
# part 1: engines (descriptor throughput) and the ISA's limit

#: Multiply-accumulates of one HardNet patch: sum over the 7 convolutions of out_h x out_w x
#: c_out x c_in x k x k (32x32x32x1x9 + 32x32x32x32x9 + 16x16x64x32x9 + 16x16x64x64x9 +
#: 8x8x128x64x9 + 8x8x128x128x9 + 1x1x128x128x64 = 39,092,224).
HARDNET_MACS = 39_092_224

#: Peak MAC per cycle per core that each ISA allows, and how that number comes about: the textbook
#: peaks of two vector pipes per core (cores with fewer wide pipes reach less). The clock is the
#: one /proc/cpuinfo reports, in a VM often the nominal clock: where the core boosts above it,
#: the measured share can exceed what the cycles allow (on this project's AMD EPYC, torch's int8
#: once measured 18,814 patches/s, 111 % of the 2,596 MHz figure: the core runs faster).
ISA_MACS = {
    "fp32": [
        ("AVX-512", 32, "2 FMA pipes x 16 fp32 lanes (512-bit)"),
        ("AVX2", 16, "2 FMA pipes x 8 fp32 lanes (256-bit)"),
        ("NEON", 8, "2 FMA pipes x 4 fp32 lanes (128-bit)"),
        ("", 8, "no FMA: 1 multiply + 1 add pipe x 4 fp32 lanes (128-bit SSE)"),
    ],
    "bf16": [
        ("AMX", 512, "AMX-BF16 TMUL: 512 bf16 MAC per cycle"),
        ("AVX512_BF16", 64, "2 pipes x 32 bf16 MAC per vdpbf16ps (512-bit)"),
    ],
    "int8": [
        ("AMX", 1024, "AMX-INT8 TMUL: 1024 u8 x s8 MAC per cycle"),
        ("AVX-512+VNNI", 128, "2 pipes x 64 u8 x s8 MAC per vpdpbusd (512-bit)"),
        ("VNNI", 64, "AVX-VNNI: 2 pipes x 32 u8 x s8 MAC per vpdpbusd (256-bit)"),
        ("AVX-512", 64, "vpmaddubsw + vpmaddwd + vpaddd (512-bit): about 64 MAC per cycle"),
        ("AVX2", 32, "vpmaddubsw + vpmaddwd + vpaddd (256-bit): about 32 MAC per cycle"),
        ("DOTPROD", 32, "2 pipes x 16 MAC per SDOT/UDOT (128-bit)"),
    ],
}


def _kernels(cpu) -> dict:
    """The ISA rows of :data:`ISA_MACS` that apply to ``cpu``: ``{"fp32": key, "bf16": key or None, "int8": key or None}``."""
    if cpu.avx512:
        fp32 = "AVX-512"
    elif cpu.avx2:
        fp32 = "AVX2"
    else:
        fp32 = "NEON" if cpu.neon else ""
    if cpu.amx:
        int8 = "AMX"
    elif cpu.avx512 and "avx512_vnni" in cpu.flags:
        int8 = "AVX-512+VNNI"
    elif cpu.vnni:
        int8 = "VNNI"
    elif cpu.avx512 and "avx512bw" in cpu.flags:
        int8 = "AVX-512"
    elif cpu.avx2:
        int8 = "AVX2"
    else:
        int8 = "DOTPROD" if cpu.dotprod else None
    if "amx_bf16" in cpu.flags:
        bf16 = "AMX"
    else:
        bf16 = "AVX512_BF16" if "avx512_bf16" in cpu.flags else None
    return {"fp32": fp32, "bf16": bf16, "int8": int8}


def _precision_of(label: str) -> str:
    """The arithmetic of an engine row (``onnx int8-w7``, ``torch bf16``, ...): the key of its ISA limit."""
    return "int8" if "int8" in label else ("bf16" if "bf16" in label else "fp32")


def isa_limits(cpu) -> dict:
    """Patches/s the ISA allows for fp32 and int8: MAC/cycle/core x cores x clock / HARDNET_MACS.

    Returns:
        ``{"fp32": {...}, "int8": {...}}``, each with ``isa``, ``mac_per_cycle``, ``derivation`` and
        ``patches_per_s`` (None where the clock is unknown); int8 is absent without an int8 kernel.
    """
    out = {}
    ghz = cpu.mhz / 1000.0 if cpu.mhz else None
    for precision, key in _kernels(cpu).items():
        if key is None:
            continue
        macs, how = next((m, h) for k, m, h in ISA_MACS[precision] if k == key)
        derivation = f"{macs} MAC/cycle/core ({how})"
        if ghz:
            derivation += f" x {cpu.cores} cores x {ghz:.3f} GHz (/proc/cpuinfo) / {HARDNET_MACS / 1e6:.2f} M MAC/patch"
        out[precision] = {
            "isa": key or "SSE",
            "mac_per_cycle": macs,
            "derivation": derivation,
            "patches_per_s": macs * cpu.cores * ghz * 1e9 / HARDNET_MACS if ghz else None,
        }
    return out


def _engine_candidates(device: str, net, trained: bool, cpu) -> list[tuple[str, Callable[[], object]]]:
    """``(label, build)`` of every engine x precision available here."""
    from ..engines import have_module
    from ..engines.onnx_engine import OnnxEngine
    from ..engines.select import fresh_exports
    from ..engines.torch_engine import TorchEngine
    from ..inference import fold_for_inference
    from ..weights import onnx_path

    out: list[tuple[str, Callable[[], object]]] = []
    if device == "cpu" and trained and have_module("onnxruntime"):
        exports = fresh_exports("hardnet").variants
        for variant in ("fp32", "int8", "int8-w7"):
            if variant in exports:
                prec = "fp32" if variant == "fp32" else "int8"
                out.append((f"onnx {variant}", lambda v=variant, p=prec: OnnxEngine(onnx_path("hardnet", v), p,
                                                                                     variant=v)))  # fmt: skip
    precisions = ["fp32", "bf16"] if device == "cpu" and cpu.bf16 else ["fp32"]
    if device == "cuda":
        precisions = ["fp32", "fp16"]
    for p in precisions:
        out.append((f"torch {p}", lambda p=p: TorchEngine(fold_for_inference(net, device), p, device)))
    return out


def have_torch() -> bool:
    """Whether PyTorch and kornia are installed (the ``torch`` extra): the torch engines and the kornia baseline."""
    from ..engines import have_module

    return have_module("torch") and have_module("kornia")


#: What the engines part says where the ``torch`` extra is missing.
NO_TORCH_NOTE = "PyTorch is not installed: the torch engines and the kornia baseline are skipped ({hint})"


def bench_describe_without_torch(config: BenchConfig, log: Callable[[str], None]) -> dict:
    """The engines part on the base install: every ONNX engine, cosines against ONNX fp32, no kornia baseline.

    Raises:
        ConfigError: the shipped ONNX exports are missing or stale (then nothing can be measured without torch).
    """
    from ..descriptors import CNNDescriptor
    from ..engines import TORCH_INSTALL_HINT, probe_cpu
    from ..engines.onnx_engine import OnnxEngine
    from ..engines.select import fresh_exports
    from ..weights import onnx_path

    if config.device != "cpu":
        raise ConfigError(f"bench --device {config.device} needs PyTorch: {TORCH_INSTALL_HINT}")
    exports = fresh_exports("hardnet")
    if "fp32" not in exports.variants:
        raise ConfigError(f"bench's engines part needs the ONNX exports or PyTorch: {exports.reason}")
    cpu = probe_cpu()
    engines = [
        (f"onnx {v}", OnnxEngine(onnx_path("hardnet", v), "fp32" if v == "fp32" else "int8", variant=v))
        for v in ("fp32", "int8", "int8-w7")
        if v in exports.variants
    ]
    auto = CNNDescriptor("hardnet", device="cpu")
    patches = real_patches(bench_images(config)[0], max(config.batch_sizes))
    limits = isa_limits(cpu)
    rows = []
    for bs in config.batch_sizes:
        x = patches[:bs]
        ref = engines[0][1](x)  # onnx fp32: the reference of the cosines
        row: dict = {"batch": bs, "kornia_fp32_per_s": None, "engines": {}}
        for label, engine in engines:
            log(f"bench engines: batch {bs}: {label}")
            t = _median_time(lambda e=engine, x=x: e(x), config.describe_repeats)
            cos = np.sum(ref * engine(x), axis=1)
            kind = _precision_of(label)
            lim = limits.get(kind, {}).get("patches_per_s")
            row["engines"][label] = {
                "per_s": bs / t,
                "ratio_vs_kornia": None,
                "min_cosine_vs_kornia": float(cos.min()),
                "mean_cosine_vs_kornia": float(cos.mean()),
                "share_of_isa_limit": bs / t / lim if lim else None,
            }
        rows.append(row)
    return {
        "weights": f"trained weights, ONNX exports in {onnx_path('hardnet', 'fp32').parent}",
        "device": "cpu",
        "cpu": cpu.to_json(),
        "auto": auto.choice.to_json(),
        "auto_label": auto.choice.label,
        "torch_threads": None,
        "isa_limits": limits,
        "rows": rows,
        "note": NO_TORCH_NOTE.format(hint=TORCH_INSTALL_HINT),
        "cosine_reference": "onnx fp32",
    }


def bench_describe(config: BenchConfig, net, note: str, log: Callable[[str], None], trained: bool = True) -> dict:
    """patches/s of every engine x precision vs kornia's HardNet fp32, same weights and patches;
    what ``auto`` picks and why; the ISA's limit and the share of it reached."""
    import kornia.feature as KF
    import torch

    from ..descriptors import CNNDescriptor
    from ..engines import probe_cpu

    cpu = probe_cpu()
    dev = config.device
    n_max = max(config.batch_sizes)
    patches = real_patches(bench_images(config)[0], n_max)
    kornia_net = KF.HardNet(pretrained=False)
    kornia_net.load_state_dict(net.state_dict(), strict=True)  # same layer names: the same weights
    kornia_net = kornia_net.eval().to(dev)

    def kornia_run(x):  # CPU patches in, CPU descriptors out, as an engine
        with torch.inference_mode():
            out = kornia_net(torch.from_numpy(x).to(dev)).float().cpu().numpy()
        _sync(dev)
        return out

    auto = CNNDescriptor("hardnet", device=dev, model=None if trained else net)
    engines = [(label, build()) for label, build in _engine_candidates(dev, net, trained, cpu)]
    rows = []
    for bs in config.batch_sizes:
        x = patches[:bs]
        log(f"bench engines: batch {bs}: kornia")
        t_k = _median_time(lambda x=x: kornia_run(x), config.describe_repeats)
        ref = kornia_run(x)
        row: dict = {"batch": bs, "kornia_fp32_per_s": bs / t_k, "engines": {}}
        for label, engine in engines:
            log(f"bench engines: batch {bs}: {label}")

            def run(e=engine, x=x):
                out = e(x)
                _sync(dev)
                return out

            t = _median_time(run, config.describe_repeats)
            cos = np.sum(ref * run(), axis=1)
            row["engines"][label] = {
                "per_s": bs / t,
                "ratio_vs_kornia": t_k / t,
                "min_cosine_vs_kornia": float(cos.min()),
                "mean_cosine_vs_kornia": float(cos.mean()),
            }
        rows.append(row)
    limits = isa_limits(cpu) if dev == "cpu" else {}
    for row in rows:
        for label, r in row["engines"].items():
            kind = _precision_of(label)
            lim = limits.get(kind, {})
            r["share_of_isa_limit"] = r["per_s"] / lim["patches_per_s"] if lim.get("patches_per_s") else None
    return {
        "weights": note,
        "device": dev,
        "cpu": cpu.to_json(),
        "auto": auto.choice.to_json(),
        "auto_label": auto.choice.label,
        "torch_threads": torch.get_num_threads(),
        "isa_limits": limits,
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------
# part 2: whole processes


#: A tiny launcher: a process forked from this (large) one would inherit its peak RSS in
#: ``ru_maxrss``, so a fresh small Python spawns the command and reports that child's own rusage.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss": usage.ru_maxrss, "exit_code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(cmd: list[str], env: dict | None = None, timeout: float = 600.0) -> dict:
    """Run one command as a whole process; return its wall time, peak RSS and JSON output.

    The peak resident memory is that process's own ``ru_maxrss`` (from ``os.wait4`` in a small
    launcher, see :data:`_LAUNCHER`); the wall time runs from spawn to exit.
    """
    with tempfile.TemporaryDirectory(prefix="featmatch-run-") as tmp:
        stats = Path(tmp) / "stats.json"
        launcher = [sys.executable, "-c", _LAUNCHER, str(stats), *cmd]
        try:
            proc = subprocess.run(launcher, capture_output=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise FeatmatchError(f"benchmark process timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
        if not stats.is_file():
            raise FeatmatchError(f"cannot run {' '.join(cmd)}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        info = json.loads(stats.read_text())
    stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    parsed = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            parsed = json.loads(line)
            break
        except ValueError:
            continue
    if parsed is None:
        raise FeatmatchError(
            f"benchmark process exited {info['exit_code']} without JSON output: {' '.join(cmd)}: {stderr.strip()[-300:]}"
        )
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = info["maxrss"] * (1 if sys.platform == "darwin" else 1024)
    return {"wall_s": info["wall_s"], "peak_mb": peak / 2**20, "exit_code": info["exit_code"], "output": parsed}


def bench_images(config: BenchConfig) -> tuple[Path, Path]:
    """The benchmark pair: ``config.images``, or graf1/graf3 from ``featmatch/evaldata`` when those
    are the defaults and ``../shared/data`` is not beside the checkout (an installed featmatch)."""
    if all(Path(p).is_file() for p in config.images):
        return Path(config.images[0]), Path(config.images[1])
    if tuple(config.images) == DEFAULT_IMAGES:
        from .datasets import EVALDATA

        logger.warning("%s not found; benchmarking on the bundled graf1/graf3 instead", DEFAULT_IMAGES[0])
        return EVALDATA / "graf1.png", EVALDATA / "graf3.png"
    missing = next(p for p in config.images if not Path(p).is_file())
    raise FeatmatchError(f"benchmark image {missing} does not exist")


def bench_pipeline(config: BenchConfig, models: Path, note: str, log: Callable[[str], None]) -> dict:
    """Whole-process ``match`` of two images: featmatch sift/hardnet(-lite) vs the OpenCV and kornia scripts."""
    img1, img2 = (str(p) for p in bench_images(config))
    n = str(config.keypoints)
    py = sys.executable
    fm = [py, "-m", "featmatch.cli", "match", img1, img2, "-n", n, "--json"]
    contenders = {
        "featmatch sift": fm + ["--descriptor", "sift"],
        "opencv sift (script)": [py, str(BENCHMARKS_DIR / "opencv_sift_match.py"), img1, img2, "-n", n],
        "featmatch hardnet": fm + ["--descriptor", "hardnet", "--device", config.device],
        "kornia hardnet (script)": [
            py, str(BENCHMARKS_DIR / "kornia_hardnet_match.py"), img1, img2, "-n", n,
            "--weights", str(models / "hardnet.pt"), "--device", config.device,
        ],
    }  # fmt: skip
    if (models / "hardnet-lite.pt").is_file():  # the half-width student distilled from hardnet
        contenders["featmatch hardnet-lite"] = fm + ["--descriptor", "hardnet-lite", "--device", config.device]
    missing = [c for c in contenders.values() if c[1].endswith(".py") and not Path(c[1]).is_file()]
    if missing:
        raise FeatmatchError(f"competitor script {missing[0][1]} is missing (bench needs a source checkout)")
    env = dict(os.environ, FEATMATCH_MODELS=str(models))
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(config.pipeline_runs):  # round robin, so background load hits every contender alike
        for name, cmd in contenders.items():
            log(f"bench pipeline: run {r + 1}/{config.pipeline_runs}: {name}")
            runs[name].append(run_process(cmd, env))
    rows = {}
    for name, rs in runs.items():
        stages: dict[str, float] = {}
        for key in rs[0]["output"].get("timings_ms", {}):
            stages[key] = statistics.median(x["output"]["timings_ms"].get(key, float("nan")) for x in rs)
        rows[name] = {
            "wall_s": statistics.median(x["wall_s"] for x in rs),
            "wall_all_s": [x["wall_s"] for x in rs],
            "peak_mb": statistics.median(x["peak_mb"] for x in rs),
            "matches": rs[-1]["output"].get("matches"),
            "inliers": rs[-1]["output"].get("inliers"),
            "found_homography": rs[-1]["output"].get("homography") is not None,
            "engine": rs[-1]["output"].get("engine"),
            "stages_ms": stages,
        }
    return {"images": [img1, img2], "keypoints": config.keypoints, "runs": config.pipeline_runs, "weights": note,
            "rows": rows}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# part 3: nearest neighbours alone


def _torch_knn2(q, b, chunk_bytes: int):
    """k=2 by ``torch.cdist`` + ``topk`` in row chunks holding at most ``chunk_bytes`` of distances."""
    import torch

    rows = max(1, chunk_bytes // (4 * b.shape[0]))
    vals, idxs = [], []
    with torch.inference_mode():
        for s in range(0, q.shape[0], rows):
            v, i = torch.cdist(q[s : s + rows], b).topk(2, dim=1, largest=False)
            vals.append(v)
            idxs.append(i)
        return torch.cat(vals), torch.cat(idxs)


def bench_knn(config: BenchConfig, log: Callable[[str], None]) -> dict:
    """Seconds per k=2 search for FAISS, OpenCV BFMatcher and torch cdist on random unit vectors.

    The FAISS column is featmatch's own search (:func:`featmatch.match.knn`) on ``config.device``
    (on CUDA: faiss-gpu when installed, else featmatch's torch search); BFMatcher runs on the CPU.
    """
    import cv2
    import torch

    from ..match import knn

    rng = np.random.default_rng(0)
    rows = []
    for n in config.knn_sizes:
        q = rng.standard_normal((n, 128)).astype(np.float32)
        b = rng.standard_normal((n, 128)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        reps = config.knn_repeats if n <= 10000 else 1
        warm = 1 if n <= 10000 else 0
        log(f"bench knn: {n} x {n}")
        row: dict = {"n": n, "repeats": reps}
        row["faiss_s"] = _median_time(lambda q=q, b=b: knn(q, b, 2, config.device), reps, warm)
        qt, bt = torch.from_numpy(q).to(config.device), torch.from_numpy(b).to(config.device)

        def torch_run(qt=qt, bt=bt):
            out = _torch_knn2(qt, bt, config.torch_chunk_bytes)
            _sync(config.device)
            return out

        row["torch_cdist_s"] = _median_time(torch_run, reps, warm)
        row["torch_chunk_rows"] = max(1, config.torch_chunk_bytes // (4 * n))
        if config.bf_max is None or n <= config.bf_max:
            bf = cv2.BFMatcher(cv2.NORM_L2)
            row["opencv_bf_s"] = _median_time(lambda q=q, b=b, bf=bf: bf.knnMatch(q, b, k=2), reps, warm)
        else:
            row["opencv_bf_s"] = None
        # Agreement of the nearest neighbour (ties aside, all three are exact searches).
        _, fi = knn(q, b, 2, "cpu")
        _, ti = torch_run()
        row["nn_agreement_torch_vs_faiss"] = float(np.mean(ti[:, 0].cpu().numpy() == fi[:, 0]))
        rows.append(row)
    return {"device": config.device, "rows": rows, "faiss_threads": _faiss_threads()}


def _faiss_threads() -> int | None:
    try:
        import faiss

        return int(faiss.omp_get_max_threads())
    except Exception:  # optional information only
        return None


# ----------------------------------------------------------------------------------------------


#: The parts of ``featmatch bench`` (``describe`` is the engines table's old name).
PARTS = ("engines", "pipeline", "knn")


def run_bench(config: BenchConfig, parts: tuple[str, ...] = PARTS, log=None) -> dict:
    """Run the selected parts; returns a JSON-able dict (see :func:`format_report`)."""
    log = log or (lambda msg: logger.info(msg))
    out: dict = {
        "device": config.device,
        "cpu_count": os.cpu_count(),
        "load_avg": _loadavg(),
        "quick": config == BenchConfig.quick(config.device),
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featmatch-bench-") as tmp:
        net, models, note, trained = (None, None, None, False)
        parts = tuple("engines" if p == "describe" else p for p in parts)
        if "pipeline" in parts or ("engines" in parts and have_torch()):
            net, models, note, trained = _hardnet_weights(Path(tmp))
        if "engines" in parts and not have_torch():
            out["engines"] = bench_describe_without_torch(config, log)
        elif "engines" in parts:
            out["engines"] = bench_describe(config, net, note, log, trained)
        if "pipeline" in parts:
            out["pipeline"] = bench_pipeline(config, models, note, log)
        if "knn" in parts:
            out["knn"] = bench_knn(config, log)
    out["seconds"] = time.perf_counter() - t0
    out["load_avg_after"] = _loadavg()
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _above_the_limit(engines: dict) -> list[str]:
    """The precisions whose measured patches/s exceed the ISA limit at /proc/cpuinfo's clock.

    No kernel beats its ISA's MAC/cycle: a figure above the limit means the clock is higher
    than reported (measured: fp32 at 159 % of the AVX2 limit on a VM that reports 2,596 MHz)."""
    out = []
    for row in engines.get("rows", []):
        for label, e in row["engines"].items():
            kind = _precision_of(label)
            share = e.get("share_of_isa_limit")
            if share is not None and share > 1.0 and kind not in out:
                out.append(kind)
    return out


def format_report(result: dict) -> str:
    """Markdown tables plus one ``ratio:`` line per comparison."""
    lines = [
        f"## featmatch bench ({'quick plumbing run, numbers not meaningful' if result.get('quick') else 'full'}) "
        f"on {result['device']}, {result.get('cpu_count')} CPUs, load average before {result.get('load_avg')}, "
        f"after {result.get('load_avg_after')}; {result.get('seconds', 0):.0f} s",
        "",
    ]
    ratios = []
    d = result.get("engines")
    if d:
        c = d["cpu"]
        lines += [
            f"### CPU: {c['model'] or c['arch']} ({c['arch']}), {c['cores']} usable cores, "
            f"{_f(c['mhz'], 0)} MHz (/proc/cpuinfo); ISA: {', '.join(c['isa']) or 'none of note'}"
            + (f" (CPUID denies {', '.join(c['denied_by_cpuid'])}, which /proc/cpuinfo lists: an emulator or a "
               "masking VM; the kernels follow CPUID)" if c.get("denied_by_cpuid") else ""),  # fmt: skip
            "",
            f"auto picks **{d['auto_label']}**: {d['auto']['why']}",
            "",
        ]
        for precision, lim in d["isa_limits"].items():
            lines.append(f"- ISA limit {precision} ({lim['isa']}): {lim['derivation']} = "
                         f"{_f(lim['patches_per_s'], 0)} patches/s")  # fmt: skip
        if d["isa_limits"]:
            lines.append("")
        above = _above_the_limit(d)
        if above:
            lines += [
                f"**Measured above the ISA limit ({', '.join(above)}): this CPU runs faster than the "
                f"{_f(c['mhz'], 0)} MHz /proc/cpuinfo reports (a boost clock, or a VM that reports its base "
                "clock), so every share below is higher than the real one.**",
                "",
            ]
        reference = d.get("cosine_reference", "kornia")
        if d.get("note"):
            lines += [f"**{d['note']}**", ""]
        lines += [
            f"### descriptor throughput (patches/s), {d['weights']}; torch threads {d['torch_threads'] or '-'}",
            "",
            f"| batch | engine | patches/s | vs kornia HardNet fp32 | share of ISA limit | min / mean cos vs {reference} |",
            "|---:|---|---:|---:|---:|---|",
        ]
        for r in d["rows"]:
            if r["kornia_fp32_per_s"] is not None:
                lines.append(
                    f"| {r['batch']} | kornia HardNet fp32 (baseline) | {_f(r['kornia_fp32_per_s'], 0)} | 1.00x | | |"
                )
            for label, e in r["engines"].items():
                share = e.get("share_of_isa_limit")
                mark = " (auto)" if label == d["auto_label"] else ""
                vs = "-" if e["ratio_vs_kornia"] is None else f"{e['ratio_vs_kornia']:.2f}x"
                lines.append(
                    f"| {r['batch']} | {label}{mark} | {_f(e['per_s'], 0)} | {vs} | "
                    f"{'-' if share is None else f'{100 * share:.0f} %'} | "
                    f"{e['min_cosine_vs_kornia']:.4f} / {e['mean_cosine_vs_kornia']:.5f} |"
                )
            auto_row = r["engines"].get(d["auto_label"])
            if auto_row and auto_row["ratio_vs_kornia"] is not None:
                ratios.append(
                    f"ratio: describe batch {r['batch']}: featmatch auto ({d['auto_label']}) speed "
                    f"{auto_row['ratio_vs_kornia']:.2f}x kornia HardNet fp32 (>1: featmatch faster)"
                )
            int8 = [(lbl, e) for lbl, e in r["engines"].items() if "int8" in lbl and e.get("share_of_isa_limit")]
            if int8:  # the engine auto runs when it is an int8 one, else the fastest int8 engine
                lbl, e = next(((lbl, e) for lbl, e in int8 if lbl == d["auto_label"]),
                              max(int8, key=lambda kv: kv[1]["per_s"]))  # fmt: skip
                ratios.append(
                    f"ratio: describe batch {r['batch']}: {lbl} reaches {100 * e['share_of_isa_limit']:.0f} % of the "
                    f"ISA's int8 limit ({_f(e['per_s'], 0)} of {_f(d['isa_limits']['int8']['patches_per_s'], 0)} "
                    "patches/s" + ("; the limit is at the reported clock, which this CPU exceeds: the real share "
                                   "is lower)" if above else ")")
                )
        lines.append("")
    p = result.get("pipeline")
    if p:
        lines += [
            f"### whole `match` processes: {Path(p['images'][0]).name} -> {Path(p['images'][1]).name}, "
            f"{p['keypoints']} keypoints, median of {p['runs']} runs; hardnet: {p['weights']}",
            "",
            "| contender | wall (s) | peak RSS (MB) | matches | inliers | H found | stages (ms, median) |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for name, r in p["rows"].items():
            stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_ms"].items())
            lines.append(
                f"| {name} | {r['wall_s']:.2f} | {r['peak_mb']:.0f} | {r['matches']} | {r['inliers']} | "
                f"{'yes' if r['found_homography'] else 'no'} | {stages} |"
            )
        rows = p["rows"]
        engine = rows["featmatch hardnet"].get("engine")
        if engine:
            lines += ["", f"featmatch hardnet described with {engine['name']} {engine['variant'] or engine['precision']}: "
                          f"{engine['why']}"]  # fmt: skip
        for ours, theirs in (
            ("featmatch sift", "opencv sift (script)"),
            ("featmatch hardnet", "kornia hardnet (script)"),
        ):
            a, b = rows[ours], rows[theirs]
            ratios.append(
                f"ratio: pipeline {ours} vs {theirs}: speed {b['wall_s'] / a['wall_s']:.2f}x (>1: featmatch faster; "
                f"{a['wall_s']:.2f} s vs {b['wall_s']:.2f} s), peak memory {a['peak_mb'] / b['peak_mb']:.2f}x "
                f"({a['peak_mb']:.0f} MB vs {b['peak_mb']:.0f} MB)"
            )
        for ours in ("featmatch hardnet", "featmatch hardnet-lite"):
            if ours not in rows:
                continue
            a, b = rows[ours], rows["opencv sift (script)"]
            ratios.append(
                f"ratio: pipeline {ours} vs opencv sift (script): time {a['wall_s'] / b['wall_s']:.2f}x the "
                f"OpenCV script's ({a['wall_s']:.2f} s vs {b['wall_s']:.2f} s)"
            )
        lines.append("")
    k = result.get("knn")
    if k:
        lines += [
            f"### k=2 nearest neighbours alone (seconds, random unit 128-d vectors, N queries x N base) on "
            f"{k['device']}; faiss threads {k.get('faiss_threads')}",
            "",
            "| N | FAISS | OpenCV BFMatcher | torch cdist (chunked) | BF / FAISS | cdist / FAISS | NN agree |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in k["rows"]:
            bf = r["opencv_bf_s"]
            lines.append(
                f"| {r['n']:,} | {r['faiss_s']:.3f} | {_f(bf, 3)} | {r['torch_cdist_s']:.3f} | "
                f"{_f(bf / r['faiss_s'] if bf else None, 2)} | {r['torch_cdist_s'] / r['faiss_s']:.2f} | "
                f"{r['nn_agreement_torch_vs_faiss']:.4f} |"
            )
            ratios.append(
                f"ratio: knn N={r['n']}: FAISS speed {_f(bf / r['faiss_s'] if bf else None, 2)}x OpenCV BFMatcher, "
                f"{r['torch_cdist_s'] / r['faiss_s']:.2f}x torch cdist (>1: FAISS faster)"
            )
        lines.append("")
    return "\n".join(lines + ratios)
