"""Connecting the Ray backend to a running cluster: the address, the token, a check that fails in seconds.

``--ray-address`` takes Ray's forms:

* ``HOST:PORT`` -- the head's GCS (``ray start --head --port PORT``; Ray's default 6379). The
  driver must run on a node of that cluster (usually the head; any machine after
  ``ray start --address HOST:PORT``), as for every Ray driver;
* ``ray://HOST[:PORT]`` -- Ray Client (port 10001 by default; needs ``pip install 'ray[client]'``),
  from a machine outside the cluster;
* ``auto`` -- the cluster running on this machine (``RAY_ADDRESS``, else the last ``ray start``).

Ray (2.60, the version tested) turns on token authentication on a cluster whose head finds a token
(``~/.ray/auth_token``, written by ``ray get-auth-token --generate`` or by a first local
``ray.init()``); a driver then has to present it, but Ray's driver presents a token only when
``RAY_AUTH_MODE=token`` is set. :func:`enable_token_auth` sets it when a token is at hand
(``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``), as
Ray's ``ray.init("auto")`` does; a cluster without authentication ignores the token.

:func:`check_cluster` then asks the cluster, in about a second, what Ray's own ``ray.init``
would find out only after 20 to 60 s of retries (nothing listens; the token is missing or
wrong; this machine is not a node), and says in one line what to do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, FeatmatchError, printable

logger = logging.getLogger(__name__)

#: Ray's default GCS port (``ray start --head``) and Ray Client port.
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
#: Seconds to wait for a TCP answer, and for a local node of the cluster, before giving up.
CONNECT_TIMEOUT_S = 5.0
NODE_WAIT_S = 3.0
#: How a user gives an address (in every message about a bad one).
ADDRESS_FORMS = "HOST:PORT (the head's GCS, e.g. 10.0.0.5:6379), ray://HOST:10001 (Ray Client) or auto"
#: Environment variables Ray reads for token authentication.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
#: The log level of Ray's C++ core (read when a process's core worker starts).
CORE_LOG_LEVEL_ENV = "RAY_BACKEND_LOG_LEVEL"

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class RayClusterError(FeatmatchError):
    """The Ray cluster cannot be used: unreachable, the token refused, or it lost the run's work (exit code 2)."""


@dataclass(frozen=True)
class RayAddress:
    """A parsed ``--ray-address``.

    Attributes:
        text: as the user gave it.
        kind: ``gcs`` (``HOST:PORT``), ``client`` (``ray://``) or ``auto``.
        host: the host name or IP address (None for ``auto``).
        port: the TCP port (None for ``auto``).
    """

    text: str
    kind: str
    host: str | None = None
    port: int | None = None

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def for_ray(self) -> str:
        """What ``ray.init(address=...)`` is given."""
        if self.kind == "auto":
            return "auto"
        return ("ray://" if self.kind == "client" else "") + self.hostport


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad --ray-address '{printable(text)}': {why}; expected {ADDRESS_FORMS}")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def parse_ray_address(text: str) -> RayAddress:
    """Check an address in one of Ray's forms (no network yet).

    Raises:
        ConfigError: not one of :data:`ADDRESS_FORMS` (exit code 2).
    """
    given = text
    text = text.strip()
    if text == "auto":
        return RayAddress(given, "auto")
    kind = "gcs"
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "ray":
            raise _bad(given, f"unknown scheme '{scheme}://'")
        kind = "client"
    if not text:
        raise _bad(given, "no host")
    if text.startswith("["):  # [IPv6]:PORT
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(given, "unbalanced brackets")
        port_text = rest[1:] if rest else ""
        has_port = bool(rest)
    elif text.count(":") > 1:
        raise _bad(given, "an IPv6 address needs brackets, as in [::1]:6379")
    else:
        host, has_port, port_text = text.partition(":")
        has_port = bool(has_port)
    if not _valid_host(host):
        raise _bad(given, f"'{printable(host)}' is not a host name or IP address")
    if not has_port:
        if kind == "client":
            return RayAddress(given, kind, host, DEFAULT_CLIENT_PORT)
        raise _bad(given, f"no port (the head's is {DEFAULT_GCS_PORT} unless `ray start --port` said otherwise)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(given, f"port '{printable(port_text)}' is not a number from 1 to 65535")
    return RayAddress(given, kind, host, int(port_text))


def token_source() -> str | None:
    """Where Ray will find a token for this process, or None: what :func:`enable_token_auth` looks at."""
    if os.environ.get(AUTH_TOKEN_ENV, "").strip():
        return f"${AUTH_TOKEN_ENV}"
    path = os.environ.get(AUTH_TOKEN_PATH_ENV)
    if path:
        return path if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if default.is_file() else None


def enable_token_auth() -> str | None:
    """Make Ray present the cluster's token, when one is at hand and ``RAY_AUTH_MODE`` is unset.

    Ray's driver sends a token only in ``RAY_AUTH_MODE=token``, and switches to it by itself
    only for ``ray.init("auto")``; an explicit address would connect without it and be
    refused. An explicit ``RAY_AUTH_MODE`` (``disabled`` too) is left as it is.

    Returns:
        Where the token comes from (for messages), or None when none is presented.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    source = token_source()
    if mode is not None:
        return source if mode.lower() == "token" else None
    if source is None:
        return None
    os.environ[AUTH_MODE_ENV] = "token"
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import Config  # Ray caches its configuration; re-read RAY_AUTH_MODE

        Config.initialize("")
    logger.info("ray: presenting the token from %s", source)
    return source


def _token_hint(source: str | None) -> str:
    if source is None:
        return (
            f"copy ~/.ray/auth_token from the head node to this machine, or set {AUTH_TOKEN_ENV} "
            "(`ray get-auth-token` on the head prints it)"
        )
    return (
        f"the token from {source} is not this cluster's: copy the head node's ~/.ray/auth_token or set {AUTH_TOKEN_ENV}"
    )


def resolve_auto() -> str:
    """The ``HOST:PORT`` that ``auto`` means on this machine (``RAY_ADDRESS``, else the latest ``ray start``).

    Raises:
        RayClusterError: no running cluster was found.
    """
    found = None
    with contextlib.suppress(Exception):  # Ray's lookup: ConnectionError when there is none
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    if not found:
        raise RayClusterError(
            "--ray-address auto: no running Ray cluster found on this machine; "
            "start one with `ray start --head`, or pass the head's HOST:PORT"
        )
    return found


def check_reachable(host: str, port: int, shown: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when nothing answers at ``host:port``.

    Raises:
        RayClusterError: the host cannot be resolved or nothing listens there.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RayClusterError(
            f"cannot reach the Ray cluster at '{printable(shown)}': unknown host '{printable(host)}' "
            f"({getattr(exc, 'strerror', None) or exc}); check --ray-address"
        ) from None
    try:
        with socket.create_connection((infos[0][4][0], port), timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayClusterError(
            f"cannot reach the Ray cluster at '{printable(shown)}': {why}; is the head running "
            f"(`ray status --address {host}:{port}` on a node), and is port {port} open to this machine?"
        ) from None


def check_cluster(address: RayAddress) -> str:
    """Ask the cluster, in seconds, what ``ray.init`` would take a minute to find out.

    1. something answers at ``HOST:PORT``;
    2. the GCS accepts this process (its token, if the cluster wants one);
    3. a node of the cluster runs on this machine (a Ray driver attaches to a local node).

    Returns:
        The address to give ``ray.init``.

    Raises:
        RayClusterError: one of the three fails; the message says what to do.
        ConfigError: ``ray://`` without Ray Client installed.
    """
    if address.kind == "client":
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise ConfigError(
                f"--ray-address {printable(address.text)} uses Ray Client, which is not installed: "
                "pip install 'ray[client]' (or run on a node of the cluster with --ray-address HEAD:6379)"
            )
        source = enable_token_auth()
        check_reachable(address.host, address.port, address.text)
        _probe_client_server(address, source)
        return address.for_ray
    shown = address.text
    if address.kind == "auto":
        gcs = resolve_auto()
        host, _, port = gcs.rpartition(":")
        host = host.strip("[]")
        shown = f"auto = {gcs}"
    else:
        host, port = address.host, address.port
    source = enable_token_auth()
    check_reachable(host, int(port), shown)
    client = _gcs_client(address, host, int(port), shown, source)
    if client is not None:
        _check_local_node(client, shown, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return address.for_ray if address.kind != "auto" else "auto"


def _gcs_client(address: RayAddress, host: str, port: int, shown: str, source: str | None):
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: ray.init alone will tell
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with _native_stderr_quiet():
            return GcsClient(address=target, cluster_id=None)
    except AuthenticationError:
        raise RayClusterError(
            f"the Ray cluster at '{printable(shown)}' refused this machine: {_token_hint(source)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure: not a Ray GCS, or a Ray of another version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RayClusterError(
            f"'{printable(shown)}' answers, but not as the head of a Ray cluster ({first}); "
            "the address is `ray start --head --port`'s, and every machine needs the same Ray version"
        ) from None


def _probe_client_server(address: RayAddress, source: str | None) -> None:
    """One ping to the Ray Client server (Ray's client would retry a refused token for 30 s)."""
    try:
        import grpc
        import ray.core.generated.ray_client_pb2 as pb
        import ray.core.generated.ray_client_pb2_grpc as pb_grpc
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError:  # another Ray: ray.init alone will tell
        return
    try:
        channel = init_grpc_channel(address.hostport, options=[], asynchronous=False)
    except Exception:  # noqa: BLE001 - another Ray's signature: ray.init alone will tell
        return
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        request = pb.ClusterInfoRequest()
        request.type = pb.ClusterInfoType.PING
        pb_grpc.RayletDriverStub(channel).ClusterInfo(request, timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise RayClusterError(
            f"'{printable(address.text)}' answers, but not as a Ray Client server (no gRPC); "
            "is it the head's Ray Client port (10001 unless `ray start --ray-client-server-port` said otherwise)?"
        ) from None
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise RayClusterError(
                f"the Ray cluster at '{printable(address.text)}' refused this machine: {_token_hint(source)}"
            ) from None
        raise RayClusterError(
            f"the Ray Client server at '{printable(address.text)}' failed: {exc.code().name} "
            f"{printable((exc.details() or '').strip()[:200])}"
        ) from None
    finally:
        channel.close()


def _check_local_node(client, shown: str, join: str) -> None:
    """A Ray driver runs on a node of its cluster; say so in seconds rather than after a minute."""
    try:
        from ray._private.services import get_node_to_connect_for_driver
    except ImportError:
        return
    try:
        get_node_to_connect_for_driver(client, timeout_seconds=NODE_WAIT_S)
    except TypeError:  # another Ray's signature: ray.init alone will tell
        return
    except RuntimeError:
        raise RayClusterError(
            f"this machine is not a node of the Ray cluster at '{printable(shown)}': run featmatch batch on the "
            f"head node, or join this machine first (`ray start --address {printable(join)} --num-cpus 0`), "
            "or use ray://HEAD:10001 (Ray Client)"
        ) from None


@contextlib.contextmanager
def _native_stderr_quiet():
    """Ray's C++ client logs each refused attempt on stderr; featmatch's one line says it better (-v keeps it)."""
    if logging.getLogger("featmatch").isEnabledFor(logging.INFO):
        yield
        return
    from ..imageio import native_stderr_silenced

    with native_stderr_silenced():
        yield


@contextlib.contextmanager
def core_log_level(level: str | None):
    """``RAY_BACKEND_LOG_LEVEL=level`` while the driver's core worker starts (it reads it then).

    None, or a level the user set already, leaves the environment as it is. Used only when
    connecting to a running cluster (a local instance started meanwhile would inherit it), after
    :func:`check_cluster`: what the core prints while it starts is swallowed too.
    """
    if level is None or CORE_LOG_LEVEL_ENV in os.environ:
        yield
        return
    from ..imageio import native_stderr_silenced

    os.environ[CORE_LOG_LEVEL_ENV] = level
    try:
        with native_stderr_silenced():  # Ray announces the level it read, on stderr
            yield
    finally:
        os.environ.pop(CORE_LOG_LEVEL_ENV, None)
