"""The measuring half of ``benchmarks/gpu_check.sh``: CUDA throughput and a warm Matcher loop -> JSON.

On a GPU machine (``--device cuda``, the default) it measures

- fp16 patches/s of featmatch's CUDA engine (torch, BN folded, channels-last, fp16 autocast):
  patches already on the GPU (the network alone) and patches from host memory (as ``match`` does);
- a warm :class:`featmatch.Matcher` loop over real pairs, hardnet, 4096 keypoints per image:
  milliseconds per pair (median, p90, per-stage medians) and the peak GPU memory;

and writes one JSON object (``--out``) with the goals (>= 1,000,000 patches/s, <= 100 ms per
pair, <= 1 GiB) marked met or not. ``--device cpu --tiny`` runs the same code path with tiny
sizes on the CPU (``tests/test_gpu_check.py``), so the plumbing is tested without a GPU.

Usage: python benchmarks/gpu_check.py --out gpu_check.json [--device cuda] [--pytest-log FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The goals of issue 12 on an H100 / H200.
GOAL_PATCHES_PER_S = 1_000_000
GOAL_MS_PER_PAIR = 100.0
GOAL_PEAK_GIB = 1.0


def default_pairs() -> list[tuple[Path, Path]]:
    """Real pairs: the river pair of ../shared/data when it is there, else the bundled test images."""
    river = REPO.parent / "shared" / "data" / "vlfeat-pairs"
    if (river / "river1.jpg").is_file():
        return [(river / "river1.jpg", river / "river2.jpg"), (river / "roofs1.jpg", river / "roofs2.jpg")]
    evaldata = REPO / "featmatch" / "evaldata"
    return [(evaldata / "graf1.png", evaldata / "graf3.png"),
            (evaldata / "motorcycle_left.png", evaldata / "motorcycle_right.png")]  # fmt: skip


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def cuda_memory_probe() -> tuple[Callable[[], None], Callable[[], dict]]:
    """``(reset, read)`` of torch's CUDA peak-memory counters (MiB)."""
    import torch

    def reset() -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def read() -> dict:
        torch.cuda.synchronize()
        return {
            "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        }

    return reset, read


def measure_patches(device: str, precision: str, n: int, batch: int, repeats: int) -> dict:
    """patches/s of the CNN engine: GPU-resident input (network alone) and host numpy input."""
    import numpy as np
    import torch

    from featmatch.descriptors import CNNDescriptor

    d = CNNDescriptor("hardnet", device=device, precision=precision, batch_size=batch)
    host = np.random.default_rng(0).random((n, 1, 32, 32), dtype=np.float32)
    resident = torch.from_numpy(host).to(device)
    out = {"engine": d.choice.to_json(), "patches": n, "batch": batch, "repeats": repeats}
    for key, x in (("gpu_resident_per_s", resident), ("from_host_per_s", host)):
        d.engine(x)  # warm-up (cudnn picks its kernels)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            d.engine(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[key] = n / statistics.median(times)
    return out


def measure_variants(device: str, n: int, batches: tuple[int, ...], repeats: int) -> dict:
    """patches/s of ways to run the folded hardnet on GPU-resident patches, and their agreement with fp32.

    ``autocast-fp16`` is what the CUDA engine does; ``fp16-weights`` converts the folded network
    and the patches to fp16 once (no per-call weight casts); ``+cudagraph`` replays one captured
    forward pass per batch (no launch overhead). On the CPU only ``fp32`` runs (the plumbing).
    """
    import copy

    import torch

    from featmatch.inference import fold_for_inference
    from featmatch.network import load_weights

    net = fold_for_inference(load_weights("hardnet"), device)
    x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net(x[:2048]).float()
    cuda = device == "cuda"
    net16 = copy.deepcopy(net).half() if cuda else None

    def autocast(xb):
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            return net(xb)

    def graphed(batch: int):
        static = x[:batch].half().clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                net16(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = net16(static)

        def run(xb):
            static.copy_(xb)
            graph.replay()
            return out

        return run

    variants = {"fp32": lambda b: net}
    if cuda:
        variants.update({"autocast-fp16": lambda b: autocast, "fp16-weights": lambda b: lambda xb: net16(xb.half()),
                         "fp16-weights+cudagraph": graphed})  # fmt: skip
    out: dict = {}
    with torch.no_grad():
        for name, make in variants.items():
            for batch in batches:
                try:
                    fn = make(batch)
                    m = min(2048, n)
                    got = torch.cat([fn(x[s : s + batch]).float().clone() for s in range(0, m, batch)])[:m]
                    cos = float((got * ref).sum(1).min())
                    times = []
                    for _ in range(repeats):
                        _sync(device)
                        t0 = time.perf_counter()
                        for s in range(0, n - batch + 1, batch):
                            fn(x[s : s + batch])
                        _sync(device)
                        times.append(time.perf_counter() - t0)
                    done = (n // batch) * batch
                    out[f"{name} @{batch}"] = {"patches_per_s": done / statistics.median(times), "min_cosine": cos}
                except Exception as exc:  # a variant that fails is a finding, not the end of the check
                    out[f"{name} @{batch}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


def measure_matcher(
    device: str,
    keypoints: int,
    pairs: list[tuple[Path, Path]],
    loops: int,
    memory: tuple[Callable[[], None], Callable[[], dict]] | None,
) -> dict:
    """A warm :class:`featmatch.Matcher` (hardnet, ``device``) over ``pairs`` ``loops`` times."""
    import featmatch
    from featmatch.detect import DetectConfig
    from featmatch.imageio import load_image

    matcher = featmatch.Matcher("hardnet", detect=DetectConfig(max_keypoints=keypoints), device=device)
    images = [(load_image(a), load_image(b)) for a, b in pairs]
    matcher.match(*images[0])  # warm: the model, cudnn, FAISS / torch search
    if memory:
        memory[0]()
    times, stages, kps, inliers = [], {}, [], []
    for _ in range(loops):
        for im1, im2 in images:
            t0 = time.perf_counter()
            r = matcher.match(im1, im2)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000.0)
            for k, v in r.timings_ms.items():
                stages.setdefault(k, []).append(v)
            kps.append([len(r.keypoints1), len(r.keypoints2)])
            inliers.append(r.num_inliers)
    times_sorted = sorted(times)
    out = {
        "pairs": [[str(a), str(b)] for a, b in pairs],
        "loops": loops,
        "keypoints_requested": keypoints,
        "keypoints": kps[: len(images)],
        "inliers": inliers[: len(images)],
        "engine": matcher.engine,
        "ms_per_pair_median": statistics.median(times),
        "ms_per_pair_p90": times_sorted[min(len(times) - 1, int(0.9 * len(times)))],
        "stages_ms_median": {k: statistics.median(v) for k, v in stages.items()},
    }
    if memory:
        out.update(memory[1]())
    return out


def run_check(args: argparse.Namespace, memory=None) -> dict:
    """Everything the JSON holds (``memory``: a ``(reset, read)`` probe; by default CUDA's on cuda)."""
    import torch

    if args.device == "cuda" and memory is None:
        memory = cuda_memory_probe()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # a script's choice, not the library's
    info = {
        "device": args.device,
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    result = {"info": info, "goals": {}}
    result["patches"] = measure_patches(args.device, args.precision, args.patches, args.batch, args.repeats)
    if args.variants:
        result["variants"] = measure_variants(args.device, args.patches, tuple(sorted({min(4096, args.patches), args.batch})),
                                              args.repeats)
    result["matcher"] = measure_matcher(args.device, args.keypoints, default_pairs()[: args.pairs], args.loops,
                                        memory)  # fmt: skip
    peak = result["matcher"].get("peak_reserved_mib")
    result["goals"] = {
        "patches_per_s": {"goal": GOAL_PATCHES_PER_S, "value": result["patches"]["gpu_resident_per_s"],
                          "met": result["patches"]["gpu_resident_per_s"] >= GOAL_PATCHES_PER_S},
        "ms_per_pair": {"goal": GOAL_MS_PER_PAIR, "value": result["matcher"]["ms_per_pair_median"],
                        "met": result["matcher"]["ms_per_pair_median"] <= GOAL_MS_PER_PAIR},
        "peak_gpu_gib": {"goal": GOAL_PEAK_GIB, "value": None if peak is None else peak / 1024,
                         "met": None if peak is None else peak / 1024 <= GOAL_PEAK_GIB},
    }  # fmt: skip
    if args.pytest_log:
        result["pytest_gpu"] = read_pytest_log(Path(args.pytest_log))
    return result


def read_pytest_log(path: Path) -> dict:
    """The summary line of a pytest run (``N passed, M skipped in ...``) and whether it failed."""
    if not path.is_file():
        return {"log": str(path), "summary": None, "failed": None}
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                     or "error" in ln or "deselected" in ln)), None)  # fmt: skip
    failed = None if summary is None else ("failed" in summary or "error" in summary)
    return {"log": str(path), "summary": summary, "failed": failed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--precision", choices=("fp16", "fp32"), default=None, help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--patches", type=int, default=262_144, help="patches per throughput call")
    p.add_argument("--batch", type=int, default=32_768, help="patches per forward pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keypoints", type=int, default=4096)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--loops", type=int, default=10, help="passes over the pairs in the warm loop")
    p.add_argument("--pytest-log", default=None, help="output of `pytest -m gpu` to summarize")
    p.add_argument("--variants", action="store_true", help="also time other ways to run the network")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a plumbing run (tests, CPU)")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "fp16" if args.device == "cuda" else "fp32"
    if args.device == "cpu" and args.precision == "fp16":
        p.error("fp16 runs on cuda only")
    if args.tiny:
        args.patches, args.batch, args.repeats, args.keypoints, args.pairs, args.loops = 512, 256, 1, 300, 1, 1
    if min(args.patches, args.batch, args.repeats, args.keypoints, args.pairs, args.loops) < 1:
        p.error("sizes and counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU is usable here (torch.cuda.is_available() is False)", file=sys.stderr)
            return 2
    result = run_check(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    g = result["goals"]
    print(
        f"gpu_check: {result['patches']['gpu_resident_per_s']:,.0f} patches/s (on GPU), "
        f"{result['patches']['from_host_per_s']:,.0f} from host; Matcher {g['ms_per_pair']['value']:.1f} ms/pair; "
        f"peak GPU {g['peak_gpu_gib']['value'] if g['peak_gpu_gib']['value'] is not None else '-'} GiB -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
