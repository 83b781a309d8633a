"""``featmatch batch --backend ray`` on a Ray cluster: pairs/s with 1 and with 2 worker nodes of 1 CPU each.

The cluster is the one of ``tests/test_ray_multihost.py`` (:mod:`tests.netns_cluster`): every
node in its own network, PID and mount namespace, joined by veth pairs, token authentication
on. The head has 0 CPUs and runs the driver (``featmatch batch --ray-address 10.77.0.1:6379``,
as the recipe in ``docs/batch-cluster.md`` does); worker node 1 joins, ``--rounds`` runs are
made, worker node 2 joins, ``--rounds`` more. Every run starts from an empty cache and RESULTS
on the same image set. The local backend with ``-j 1`` and ``-j 2`` runs in the same session as
the peer. Needs root and iproute2.

    sudo python benchmarks/ray_cluster_scaling.py                 # 8 photos x 8 crops, 2016 pairs
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featmatch.batching.synthetic import TEST_PHOTOS, make_crop_set  # noqa: E402
from tests.netns_cluster import GCS_PORT, HEAD_IP, NetnsCluster, why_not_available  # noqa: E402

SUMMARY = re.compile(
    r"features (\d+) computed.*?matched (\d+) in ([\d.]+) s \(([\d.]+) pairs/s\).*?total ([\d.]+) s", re.S
)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse(stdout: str) -> tuple[float, float, float]:
    """(matching pairs/s, matching s, total s) from the summary ``featmatch batch`` prints."""
    m = SUMMARY.search(stdout)
    if m is None:
        raise SystemExit(f"no summary in: {stdout}")
    return float(m.group(4)), float(m.group(3)), float(m.group(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--max-keypoints", default="1000")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    why = why_not_available()
    if why:
        raise SystemExit(f"cannot run: {why}")

    work = Path(tempfile.mkdtemp(prefix="fmr-bench-"))
    crops = make_crop_set(
        args.data,
        work / "imgs",
        photos=TEST_PHOTOS[: args.photos],
        crops_per_photo=args.crops,
        photo_side=1200,
        crop_shape=(480, 640),
    )
    n = len(crops.names)
    print(f"{n} images (640x480 crops of {args.photos} test photos), {n * (n - 1) // 2} pairs (exhaustive), ", end="")
    print(f"max_keypoints {args.max_keypoints}, SIFT")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    base = [sys.executable, "-m", "featmatch.cli", "batch", str(crops.folder), "-n", args.max_keypoints, "-q"]
    rows = []
    counter = iter(range(1000))

    def out() -> list[str]:
        i = next(counter)
        return ["-o", str(work / f"r{i}.jsonl")]

    def local(j: int) -> None:
        res = subprocess.run([*base, *out(), "-j", str(j)], capture_output=True, text=True, timeout=600)
        rows.append((f"local -j {j}", *parse(res.stdout)))
        print(rows[-1], flush=True)

    cluster = NetnsCluster(hide=(work,))
    try:
        head = cluster.start_head(cpus=0, hide=False)
        env = {"HOME": str(head.home)}  # the head's ~/.ray/auth_token: featmatch presents it
        ray = [*base, "--backend", "ray", "--ray-address", f"{HEAD_IP}:{GCS_PORT}"]

        def on_cluster(label: str) -> None:
            res = cluster.run_on(head, [*ray, *out()], env, timeout=600)
            if res.returncode != 0:
                raise SystemExit(res.stderr[-3000:])
            rows.append((label, *parse(res.stdout)))
            print(rows[-1], flush=True)

        for nodes in (1, 2):
            cluster.start_node(cluster.new_host(f"n{nodes}"), cpus=1)
            time.sleep(2)
            for _ in range(args.rounds):
                local(nodes)
                on_cluster(f"ray, {nodes} worker node{'s' * (nodes > 1)} x 1 CPU")
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| run | matching pairs/s | matching s | total s (features + matching + start) |")
    print("|---|---|---|---|")
    for label, pps, ms, total in rows:
        print(f"| {label} | {pps:.0f} | {ms:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
