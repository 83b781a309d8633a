"""``featmatch batch --backend ray --ray-address``: the address, the token, and a cluster across "hosts".

The first part needs no cluster: addresses in Ray's forms, bad ones rejected in one line
(exit code 2), the token presented when one is at hand.

The ``multihost`` test runs a real Ray cluster whose nodes share nothing but a network:
a head and a worker node (1 CPU each) and a driver's node (0 CPUs), each in its own network,
PID and mount namespace (:mod:`tests.netns_cluster`; needs root and iproute2), token
authentication on as Ray 2.60 sets it up. The driver runs ``featmatch batch`` as a user would
on a machine that joined the cluster; the head and worker nodes cannot see the driver's files.
It checks the one-line failures (not a node yet, wrong token), a full run equal to the local
backend's, and a run that loses the worker node mid-run. ``.ci/run`` sets
``FEATMATCH_REQUIRE_NETNS=1`` so that CI fails rather than skips it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.batching import batch
from featmatch.batching.raycluster import (
    AUTH_MODE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_PATH_ENV,
    RayClusterError,
    check_cluster,
    enable_token_auth,
    parse_ray_address,
    token_source,
)
from featmatch.batching.synthetic import TEST_PHOTOS, make_crop_set
from featmatch.cli import cli
from featmatch.errors import ConfigError

REQUIRE_NETNS_ENV = "FEATMATCH_REQUIRE_NETNS"
#: Few keypoints: the pairs are many and quick; what is tested is where they run.
KEYPOINTS = "1000"

# -- addresses and the token (no cluster) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "host", "port", "for_ray"),
    [
        ("10.0.0.5:6379", "gcs", "10.0.0.5", 6379, "10.0.0.5:6379"),
        ("head-node.lan:6390", "gcs", "head-node.lan", 6390, "head-node.lan:6390"),
        ("[fd00::1]:6379", "gcs", "fd00::1", 6379, "[fd00::1]:6379"),
        ("ray://head:10001", "client", "head", 10001, "ray://head:10001"),
        ("ray://head", "client", "head", 10001, "ray://head:10001"),
        (" auto ", "auto", None, None, "auto"),
    ],
)
def test_ray_address_forms(text, kind, host, port, for_ray):
    a = parse_ray_address(text)
    assert (a.kind, a.host, a.port, a.for_ray) == (kind, host, port, for_ray)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not-a-host:abc", "port 'abc'"),
        ("head:0", "port '0'"),
        ("head:65536", "port '65536'"),
        ("head", "no port"),
        ("http://head:6379", "unknown scheme"),
        ("ray://", "no host"),
        (":6379", "not a host name"),
        ("bad_host!:6379", "not a host name"),
        ("fd00::1:6379", "brackets"),
        ("[fd00::1:6379", "brackets"),
        ("", "no host"),
    ],
)
def test_bad_ray_address_is_one_line(text, why):
    with pytest.raises(ConfigError, match=why) as info:
        parse_ray_address(text)
    assert "\n" not in str(info.value) and "HOST:PORT" in str(info.value)


def test_bad_ray_address_exits_2_before_any_work(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "imgs").mkdir()
    res = CliRunner().invoke(
        cli,
        [
            "batch",
            str(tmp_path / "imgs"),
            "-o",
            str(tmp_path / "r.jsonl"),
            "--backend",
            "ray",
            "--ray-address",
            "not-a-host:abc",
        ],
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featmatch: error: bad --ray-address 'not-a-host:abc'"), lines


def test_unreachable_cluster_fails_in_seconds_with_one_line(tmp_path):
    """Nothing listens (a closed port on loopback), and a host that does not resolve."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address, expect in ((f"127.0.0.1:{port}", "cannot reach"), ("no-such-host.invalid:6379", "unknown host")):
        t0 = time.monotonic()
        with pytest.raises(RayClusterError, match=expect) as info:
            check_cluster(parse_ray_address(address))
        assert time.monotonic() - t0 < 15 and "\n" not in str(info.value)


@pytest.fixture
def clean_auth_env(monkeypatch, tmp_path):
    for var in (AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_token_found_where_ray_puts_it(clean_auth_env, monkeypatch):
    pytest.importorskip("ray")
    assert token_source() is None and enable_token_auth() is None and AUTH_MODE_ENV not in os.environ
    (clean_auth_env / ".ray").mkdir()
    (clean_auth_env / ".ray" / "auth_token").write_text("abc")
    assert enable_token_auth() == "~/.ray/auth_token" and os.environ[AUTH_MODE_ENV] == "token"


def test_token_from_the_environment(clean_auth_env, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv(AUTH_TOKEN_ENV, "abc")
    assert enable_token_auth() == f"${AUTH_TOKEN_ENV}" and os.environ[AUTH_MODE_ENV] == "token"


def test_explicit_auth_mode_is_left_alone(clean_auth_env, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv(AUTH_TOKEN_ENV, "abc")
    monkeypatch.setenv(AUTH_MODE_ENV, "disabled")
    assert enable_token_auth() is None and os.environ[AUTH_MODE_ENV] == "disabled"


def test_ray_address_from_the_environment_is_checked(tmp_path, monkeypatch):
    """``RAY_ADDRESS`` (which ``ray.init()`` itself reads) goes through the same parsing."""
    pytest.importorskip("ray")
    from featmatch.batching.config import BatchConfig
    from featmatch.batching.runner import RayBackend

    monkeypatch.setenv("RAY_ADDRESS", "head:abc")
    with pytest.raises(ConfigError, match="bad --ray-address 'head:abc'"):
        RayBackend(BatchConfig(), 1, None)


# -- a cluster across network namespaces -------------------------------------------------------


@pytest.fixture(scope="module")
def netns_ready():
    pytest.importorskip("ray")
    from .netns_cluster import why_not_available

    why = why_not_available()
    if why is not None:
        if os.environ.get(REQUIRE_NETNS_ENV) == "1":
            pytest.fail(f"{REQUIRE_NETNS_ENV}=1 but {why}")
        pytest.skip(why)


def _results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_same_as_local(got: list[dict], ref: dict[tuple, dict]) -> None:
    pairs = [(d["image1"], d["image2"]) for d in got]
    assert len(pairs) == len(set(pairs)), "a pair was written twice"
    assert set(pairs) == set(ref), "pairs missing or extra"
    for d in got:
        r = ref[(d["image1"], d["image2"])]
        assert (d["status"], d["matches"], d["inliers"], d["keypoints"]) == (
            r["status"],
            r["matches"],
            r["inliers"],
            r["keypoints"],
        ), d
        if r["homography"] is not None:
            np.testing.assert_allclose(d["homography"], r["homography"], rtol=1e-6, atol=1e-6)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featmatch: error: "), stderr[-3000:]
    return lines[0]


@pytest.mark.multihost
def test_batch_on_a_cluster_across_namespaces_and_a_node_lost(netns_ready, data_dir, tmp_path):
    from .netns_cluster import GCS_PORT, HEAD_IP, NetnsCluster

    t_start = time.monotonic()

    def step(what: str) -> None:  # shown with -s, and with a failure
        print(f"[{time.monotonic() - t_start:5.1f} s] {what}", flush=True)

    work = tmp_path / "driver"
    crops = make_crop_set(
        data_dir, work / "imgs", photos=TEST_PHOTOS[:6], crops_per_photo=6, photo_side=1200, crop_shape=(480, 640)
    )
    # The reference: the local backend, in this process.
    ref_out = tmp_path / "local.jsonl"
    batch(crops.folder, "exhaustive", ref_out, workers=1, max_keypoints=int(KEYPOINTS)).run()
    ref = {(d["image1"], d["image2"]): d for d in _results(ref_out)}
    assert len(ref) == len(crops.names) * (len(crops.names) - 1) // 2

    step("reference run (local backend) done")
    address = f"{HEAD_IP}:{GCS_PORT}"
    featmatch = [sys.executable, "-m", "featmatch.cli", "batch", str(crops.folder), "-n", KEYPOINTS]
    featmatch += ["--backend", "ray", "--ray-address", address]
    cluster = NetnsCluster(hide=(work,))
    try:
        cluster.start_head(cpus=1)
        worker = cluster.start_node(cluster.new_host("w"), cpus=1)
        step("head and worker node up")
        driver = cluster.new_host("d")
        home = driver.home
        (home / ".ray").mkdir()

        # 1. A machine that is not a node of the cluster: one line, in seconds, before any bar.
        cluster.shell(driver)
        t0 = time.monotonic()
        env = {"HOME": str(home), AUTH_TOKEN_ENV: cluster.token}
        res = cluster.run_on(driver, [*featmatch, "-o", str(work / "x.jsonl")], env, timeout=90)
        took = time.monotonic() - t0
        assert res.returncode == 2 and "not a node of the Ray cluster" in _one_error_line(res.stderr), res.stderr
        assert took < 30, took
        step("1. not a node: checked")
        # ... from where Ray Client (ray://, pip install 'ray[client]') does work, or says in one line what to install.
        client = [*featmatch[:-1], f"ray://{HEAD_IP}:10001", "-p", "sequential:1", "-q", "-o", str(work / "c.jsonl")]
        res = cluster.run_on(driver, client, env, timeout=120)
        if importlib.util.find_spec("grpc") is not None:
            assert res.returncode == 0 and res.stderr.strip() == "", res.stderr[-3000:]
            got = _results(work / "c.jsonl")
            assert len(got) == len(crops.names) - 1
            _assert_same_as_local(got, {(d["image1"], d["image2"]): ref[d["image1"], d["image2"]] for d in got})
        else:
            assert res.returncode == 2 and "pip install 'ray[client]'" in _one_error_line(res.stderr), res.stderr
        cluster.kill(driver)

        step("1b. ray:// checked")
        cluster.start_node(driver, cpus=0, hide=False)  # the driver's machine joins, as the recipe says
        # 2. A wrong token: one line, in seconds.
        t0 = time.monotonic()
        res = cluster.run_on(
            driver, [*featmatch, "-o", str(work / "x.jsonl")], {"HOME": str(home), AUTH_TOKEN_ENV: "0" * 32}, timeout=90
        )
        assert res.returncode == 2 and "refused this machine" in _one_error_line(res.stderr), res.stderr
        assert time.monotonic() - t0 < 30

        step("2. wrong token: checked")
        # 3. The token where `ray start` writes it (RAY_AUTH_MODE unset): the whole run, no Ray chatter.
        (home / ".ray" / "auth_token").write_text(cluster.token)
        out = work / "r.jsonl"
        res = cluster.run_on(driver, [*featmatch, "-o", str(out), "-q"], {"HOME": str(home)}, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stderr.strip() == "", res.stderr[-3000:]
        assert f"matched {len(ref)}" in res.stdout, res.stdout
        _assert_same_as_local(_results(out), ref)
        ran_on_worker = list(worker.temp.glob("session_*/logs/worker-*"))
        assert ran_on_worker, "no task ran on the worker node"

        step("3. full run: checked")
        # 3b. `auto`: the cluster this machine is a node of (found from its raylet, as Ray does).
        auto = [*featmatch[:-1], "auto", "-p", "sequential:1", "-q", "-o", str(work / "a.jsonl")]
        res = cluster.run_on(driver, auto, {"HOME": str(home)}, timeout=120)
        assert res.returncode == 0 and res.stderr.strip() == "", res.stderr[-3000:]
        got = _results(work / "a.jsonl")
        assert len(got) == len(crops.names) - 1
        _assert_same_as_local(got, {(d["image1"], d["image2"]): ref[d["image1"], d["image2"]] for d in got})
        step("3b. auto: checked")
        # 4. The worker node is lost mid-run (the token from RAY_AUTH_TOKEN this time).
        out2 = work / "r2.jsonl"
        env = {"HOME": str(tmp_path), AUTH_TOKEN_ENV: cluster.token}
        proc = cluster.popen_on(
            driver, [*featmatch, "-o", str(out2), "-q"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        done_at_kill = 0
        while time.monotonic() < deadline and proc.poll() is None:
            done_at_kill = len(out2.read_text().splitlines()) if out2.exists() else 0
            if done_at_kill >= 100:
                break
            time.sleep(0.05)
        cluster.kill(worker)
        step(f"4. worker node killed after {done_at_kill} pairs")
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate(timeout=30)
            pytest.fail(f"the run did not end within 180 s of the node's loss: {stderr[-3000:]}")
        assert 0 < done_at_kill < len(ref), f"the node was not lost mid-run ({done_at_kill} of {len(ref)} pairs done)"
        if proc.returncode == 2:  # stopped with one clear line: the same command resumes
            assert "run the same command again" in _one_error_line(stderr)
            res = cluster.run_on(driver, [*featmatch, "-o", str(out2), "-q"], env, timeout=240)
            assert res.returncode == 0, res.stderr[-3000:]
        else:
            assert proc.returncode == 0, stderr[-3000:]
            assert stderr.strip() == "", stderr[-3000:]
        _assert_same_as_local(_results(out2), ref)
        step(f"4. the run lost its worker node and ended with exit code {proc.returncode}: checked")
    finally:
        cluster.close()
