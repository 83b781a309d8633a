"""A Ray cluster of several "hosts" on one machine: each node in its own network, PID and mount namespace.

Used by ``tests/test_ray_multihost.py`` and ``benchmarks/ray_cluster_scaling.py``. Needs root
and iproute2 (``ip netns``) and util-linux (``unshare``, ``nsenter``).

The namespaces ``<prefix>h`` (the head, 10.77.0.1) and ``<prefix>n1``, ``<prefix>n2``, ...
(10.77.0.2, ...) are joined by veth pairs to a bridge inside the head's namespace; no interface
is added outside them, so no traffic leaves them. Each node is ``ray start --block`` as PID 1 of
its own PID namespace (``unshare --pid --fork --kill-child --mount-proc``): killing that one
process takes the whole node down at once, as a machine lost mid-run, and a driver entering the
namespace sees only its own node's processes (Ray finds its local node that way). Each node also
has its own HOME and Ray temp dir, and the folders given as ``hide`` (the driver's images and
cache) are covered by an empty tmpfs in its mount namespace, so that only the network is shared.

Everything is bounded in time, and :meth:`NetnsCluster.close` (also registered with ``atexit``)
kills the nodes and deletes the namespaces; stale namespaces of a crashed earlier run (named
after a PID that no longer exists) are deleted on start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.77.0"
HEAD_IP = f"{SUBNET}.1"
GCS_PORT = 6379
#: What every node and driver imports first: the featmatch under test (then this process's PYTHONPATH).
PYTHONPATH = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
#: The head's health checks in the test: a node that stops answering is dead after ~3 s (Ray: ~30 s).
HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
#: Name prefix of every namespace made here ("fmr<pid>"): stale ones are found by their PID.
PREFIX = "fmr"


def why_not_available() -> str | None:
    """None when namespaces can be made here, else the reason (for a skip)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install -y iproute2 util-linux)"
    probe = f"{PREFIX}{os.getpid()}probe"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def delete_stale_namespaces() -> None:
    """Namespaces left by a run that was killed before its cleanup (its PID is gone)."""
    listing = _sh("ip", "netns", "list", check=False).stdout
    for name in {line.split()[0] for line in listing.splitlines() if line.strip()}:
        m = re.match(rf"{PREFIX}(\d+)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _sh("ip", "netns", "del", name, check=False)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (``unshare --kill-child`` passes it on)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Node:
    """One Ray node: its namespace, address, files and processes."""

    name: str
    netns: str
    ip: str
    home: Path
    temp: Path
    log: Path
    proc: subprocess.Popen | None = None
    pid1: int | None = None
    env: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.pid1 is not None and Path(f"/proc/{self.pid1}").exists()


class NetnsCluster:
    """Namespaces, veth pairs, a bridge; :meth:`start_head`, :meth:`start_node`, :meth:`run_on`, :meth:`kill`."""

    def __init__(self, hide: tuple[Path, ...] = (), token: str | None = None):
        delete_stale_namespaces()
        self.prefix = f"{PREFIX}{os.getpid()}"
        # Short: Ray's Unix sockets live under the temp dir (a socket path has at most 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="fmr", dir="/tmp"))
        self.hide = tuple(Path(h) for h in hide)
        self.token = token or os.urandom(16).hex()
        self.nodes: dict[str, Node] = {}
        self._netns: list[str] = []
        self._closed = False
        atexit.register(self.close)
        self._add_netns("h")
        ns = self.prefix + "h"
        _sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", ns, "addr", "add", f"{HEAD_IP}/24", "dev", "br0")
        _sh("ip", "-n", ns, "link", "set", "br0", "up")

    def _add_netns(self, short: str) -> str:
        ns = self.prefix + short
        _sh("ip", "netns", "add", ns)
        self._netns.append(ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _wire(self, short: str, ip: str) -> str:
        """A namespace joined to the head's bridge by a veth pair, with address ``ip``."""
        ns = self._add_netns(short)
        head_ns, end = self.prefix + "h", f"v{short}"
        _sh("ip", "-n", head_ns, "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "-n", head_ns, "link", "set", end, "master", "br0")
        _sh("ip", "-n", head_ns, "link", "set", end, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return ns

    def new_host(self, short: str) -> Node:
        """A namespace ("host") without a Ray node yet (10.77.0.N)."""
        ip = HEAD_IP if short == "h" else f"{SUBNET}.{sum(n != 'h' for n in self.nodes) + 2}"
        ns = self.prefix + "h" if short == "h" else self._wire(short, ip)
        d = self.root / short
        node = Node(short, ns, ip, d / "home", d / "t", d / "log")
        node.home.mkdir(parents=True)
        self.nodes[short] = node
        return node

    def _env(self, node: Node, extra: dict) -> dict:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(node.home),
            "PYTHONPATH": PYTHONPATH,  # the workers import the featmatch under test
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def _ray_start(self, node: Node, args: list[str], env: dict, timeout: float, hide: bool = True) -> Node:
        ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
        ray += ["--node-ip-address", node.ip, "--temp-dir", str(node.temp), "--object-store-memory", str(200 * 2**20)]
        hide = " && ".join(
            f"mount -t tmpfs -o size=1m fmr-hidden {shlex.quote(str(h))}" for h in self.hide if hide and h.exists()
        )
        script = (hide + " && " if hide else "") + "exec " + shlex.join(ray + args)
        node.env = self._env(node, env)
        node.pid1 = None
        cmd = ["ip", "netns", "exec", node.netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
        cmd += ["sh", "-c", script]
        with open(node.log, "wb") as log:
            node.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=node.env, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.pid1 is None:
                with contextlib.suppress(OSError, ValueError):
                    kids = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
                    node.pid1 = int(kids[0]) if kids else None
            if node.proc.poll() is not None:
                raise RuntimeError(f"node {node.name} exited: {node.log.read_text()[-2000:]}")
            if "Ray runtime started" in node.log.read_text(errors="replace"):
                return node
            time.sleep(0.2)
        raise TimeoutError(f"node {node.name} did not start in {timeout:.0f} s: {node.log.read_text()[-2000:]}")

    def start_head(
        self, cpus: int = 1, hide: bool = True, fast_failure_detection: bool = True, timeout: float = 60
    ) -> Node:
        """The head, with token authentication: the token in its ~/.ray/auth_token (as ``ray start`` finds it).

        ``hide``: cover the cluster's ``hide`` folders (False when the driver runs on the head).
        ``fast_failure_detection``: the head's GCS declares a silent node dead after about 3 s
        (:data:`HEALTH_CHECK`) rather than Ray's default of about 30 s, to keep the test short.
        """
        node = self.new_host("h")
        (node.home / ".ray").mkdir()
        (node.home / ".ray" / "auth_token").write_text(self.token)
        args = ["--head", "--port", str(GCS_PORT), "--num-cpus", str(cpus), "--include-dashboard", "false"]
        return self._ray_start(node, args, HEALTH_CHECK if fast_failure_detection else {}, timeout, hide)

    def start_node(self, node: Node, cpus: int = 1, hide: bool = True, timeout: float = 60) -> Node:
        """Join ``node`` (from :meth:`new_host`) to the head, the token given as Ray documents for nodes.

        ``hide``: cover the cluster's ``hide`` folders (False for the driver's own node).
        """
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        args = ["--address", f"{HEAD_IP}:{GCS_PORT}", "--num-cpus", str(cpus)]
        return self._ray_start(node, args, env, timeout, hide)

    def shell(self, node: Node, timeout: float = 60) -> Node:
        """A bare host (no Ray node) to run commands in: ``sleep`` as PID 1 of its namespaces."""
        cmd = ["ip", "netns", "exec", node.netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
        node.pid1 = None
        node.proc = subprocess.Popen(
            [*cmd, "sleep", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while node.pid1 is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                node.pid1 = int(Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()[0])
            time.sleep(0.1)
        return node

    def popen_on(self, node: Node, args: list[str], env: dict, **kw) -> subprocess.Popen:
        """Start ``args`` on ``node``'s host: its network, PID and mount namespaces."""
        full = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "PYTHONPATH": PYTHONPATH, **env}
        cmd = ["nsenter", "-t", str(node.pid1), "-n", "-p", "-m", "--", *args]
        return subprocess.Popen(cmd, env=full, preexec_fn=_die_with_parent, **kw)

    def run_on(self, node: Node, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
        proc = self.popen_on(node, args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=30)
            err += f"\n[killed after {timeout} s]"
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def kill(self, node: Node) -> None:
        """The node is lost at once: SIGKILL to PID 1 of its PID namespace takes every process in it."""
        if node.pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid1, signal.SIGKILL)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=30)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes.values():
            self.kill(node)
        for ns in reversed(self._netns):
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
