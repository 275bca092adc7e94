"""Start every service and the gateway as child processes (what `make run` does).

Waits until each reports SERVING, prints where everything listens, and on Ctrl-C / SIGTERM
stops them all (SIGTERM, then SIGKILL after the grace period). Children die with the
launcher even if it is killed (PR_SET_PDEATHSIG), so no orphans are left.
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.common.config import REPO_ROOT, SERVICE_NAMES, Config, ConfigError, load_config
from services.common.proc import die_with_parent

def _grpc_serving(config: Config, address: str) -> bool:
    from services.common.auth import open_channel
    from services.common.healthcheck import SERVING, probe

    with open_channel(config, address) as ch:
        return probe(ch, timeout=1) == SERVING


def _http_up(url: str, root: Path | None = None) -> bool:
    """GET `url` gets an HTTP answer, https verified against `root` (our own CA or a
    self-signed cert). Any status counts: the gateway's /health answers 503 while a backend it
    knows is not started (`--services` picks a subset), and it is up all the same."""
    context = ssl.create_default_context(cafile=str(root)) if root is not None else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):  # noqa: S310 - our gateway
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:  # refused, TLS failure (URLError and ssl errors are OSErrors)
        return False


def taken_ports(config: Config, services: list[str], gateway: bool) -> list[str]:
    """One line per port this launch would bind that something else holds already (another
    Win-Train, say), each naming its setting. Checked before anything starts: a launch that
    cannot bind must not report another instance's services as its own."""
    from services.common.metrics import metrics_bind_host
    from services.common.server import BindError, check_port_free

    wanted = []
    for name in services:
        wanted.append((str(config.get(f"services.{name}.host")), config.get(f"services.{name}.port"),
                       f"services.{name}.port"))
        wanted.append((metrics_bind_host(config, name), config.get(f"services.{name}.metrics_port"),
                       f"services.{name}.metrics_port"))
    if gateway:
        wanted.append((str(config.get("api.host", "127.0.0.1")), config.get("api.port", 8801), "api.port"))
    lines = []
    for host, port, setting in wanted:
        try:
            check_port_free(host, port, setting)
        except BindError as exc:
            lines.append(str(exc))
    return lines


class Launcher:
    def __init__(self, config: Config, services: list[str], gateway: bool, log_dir: Path | None):
        self.config = config
        self.services = services
        self.gateway = gateway
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def _spawn(self, name: str, module: str) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT if out else None, preexec_fn=die_with_parent,
        )

    def start(self, timeout: float) -> None:
        for name in self.services:
            self._spawn(name, f"services.{name}")
        pending = {name: self.config.service_address(name) for name in self.services}
        deadline = time.monotonic() + timeout
        while pending:
            self._check_alive()
            for name, address in list(pending.items()):
                if _grpc_serving(self.config, address):
                    print(f"  {name:<10} grpc://{address}  SERVING", flush=True)
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout:.0f}s: {', '.join(pending)}")
            time.sleep(0.3)
        if self.gateway:
            self._spawn("gateway", "gateway")
            from services.common.auth import gateway_url, tls_root_file

            url, root = gateway_url(self.config), tls_root_file(self.config)
            while not _http_up(url + "/health", root):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway not healthy at {url}/health after {timeout:.0f}s")
                time.sleep(0.3)
            print(f"  {'gateway':<10} {url}  (docs: {url}/docs, UI: {url}/ui)", flush=True)

    def _check_alive(self) -> None:
        if self.stopping:
            raise RuntimeError("interrupted during start-up")
        for name, proc in self.children.items():
            code = proc.poll()
            if code is not None and not self.stopping:
                raise RuntimeError(f"{name} exited with code {code} during start-up")

    def wait(self) -> int:
        """Block until a child dies or a signal asks us to stop; return the exit code."""
        while not self.stopping:
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping everything", file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        self.stopping = True
        grace = float(self.config.get("server.grace_seconds", 10)) + 5
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.children.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in {grace:.0f}s; killing it", file=sys.stderr, flush=True)
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every Win-Train service and the gateway.")
    parser.add_argument("--services", default=",".join(SERVICE_NAMES),
                        help="comma-separated services to start (default: all)")
    parser.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for SERVING")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each process's log here")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"wintrain: {exc}", file=sys.stderr)
        return 2
    services = [s for s in args.services.split(",") if s]
    unknown = sorted(set(services) - set(SERVICE_NAMES))
    if unknown:
        print(f"wintrain: unknown services {unknown}; known: {list(SERVICE_NAMES)}", file=sys.stderr)
        return 2
    taken = taken_ports(config, services, not args.no_gateway)
    if taken:
        for line in taken:
            print(f"wintrain: {line}", file=sys.stderr)
        print("wintrain: nothing started; stop what holds these ports or move them "
              "(e.g. WINTRAIN__SERVICES__DATA__PORT=50061, WINTRAIN__API__PORT=8811)", file=sys.stderr)
        return 2
    launcher = Launcher(config, services, not args.no_gateway, args.log_dir)

    def on_signal(signum, _frame):
        launcher.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"Win-Train starting (workspace {config.workspace})", flush=True)
    code = 0
    try:
        launcher.start(args.timeout)
        print("Win-Train is up. Ctrl-C stops everything.", flush=True)
        code = launcher.wait()
    except (RuntimeError, TimeoutError) as exc:
        print(f"wintrain: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        launcher.stop()
        print("Win-Train stopped.", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
