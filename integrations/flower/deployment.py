"""A real Flower deployment on loopback: one ``flower-superlink`` and one ``flower-supernode`` per client as
separate processes on 127.0.0.1, driven by ``flwr run``; every process started here is stopped by its pid.

The app's ``pyproject.toml`` is written by hand (``flwr new`` needs the network) and points at this package's
:data:`SERVER_COMPONENT` / :data:`CLIENT_COMPONENT`; ``FLWR_HOME`` is a temporary folder, telemetry and the
SuperLink's runtime dependency installation are off.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from distill_apps.errors import DistillError

from .config import FederatedConfig

#: the ``flwr run`` component strings of this package (the app the SuperLink/SuperNodes load)
SERVER_COMPONENT = "distill_apps.integrations.flower:server_app"
CLIENT_COMPONENT = "distill_apps.integrations.flower:client_app"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    """A Python value as a TOML literal (bool, number or quoted string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_app(app_dir: Path, cfg: FederatedConfig) -> Path:
    """Write the Flower app's ``pyproject.toml`` by hand (``flwr new`` needs the network)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    conf = "\n".join(f"{k} = {_toml_value(v)}" for k, v in cfg.as_flat_dict().items())
    (app_dir / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "distill-apps-federated"
version = "1.0.0"
description = "Federated learning with distilled summaries (distill-apps)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "distill-apps"

[tool.flwr.app.components]
serverapp = "{SERVER_COMPONENT}"
clientapp = "{CLIENT_COMPONENT}"

[tool.flwr.app.config]
{conf}
""")
    (app_dir / "README.md").write_text("Flower app of distill-apps: components live in the installed package.\n")
    return app_dir


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started and its children (its own process group, whose id is its pid)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group (flwr-serverapp / flwr-clientapp)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=grace)


def _wait_http(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Wait until the SuperLink answers its health check on ``port``; an exited process or a timeout is a DistillError
    pointing at its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DistillError(f"flower-superlink exited with code {proc.returncode}; see {log_path}.")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DistillError(f"flower-superlink did not answer on 127.0.0.1:{port} within {timeout:.0f} s; see {log_path}.")


def _executable(name: str) -> str:
    """Path of a Flower command (``flower-superlink``, ...), found on PATH or beside this Python; missing is a
    DistillError."""
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise DistillError(f"{name} is not on PATH: pip install 'distill-apps[flower]' in this environment.")
    return found


def deploy(cfg: FederatedConfig, *, workdir: str | os.PathLike | None = None, timeout: float = 600.0,
           startup_timeout: float = 30.0, keep_logs: bool = False,
           during_run: Callable[[dict[str, subprocess.Popen], Path], None] | None = None) -> dict[str, Any]:
    """Run ``cfg`` as a real deployment on loopback and return the results.

    Starts ``flower-superlink --insecure`` on a free 127.0.0.1 port, one ``flower-supernode --insecure`` per
    client (``--node-config 'partition-id=i num-partitions=n'``), then ``flwr run <app> <federation> --stream``
    with a temporary ``FLWR_HOME`` and a hand-written app ``pyproject.toml``. Everything is bounded by
    ``timeout`` seconds, and every process started here is stopped by its pid in a ``finally``.

    ``during_run(processes, logs_dir)``, when given, runs in a thread once ``flwr run`` has started; it gets the
    processes by name (``superlink``, ``supernode-i``, ``flwr-run``) and may e.g. kill a SuperNode to rehearse
    a client lost in the middle of a round (the fault-injection tests do).
    """
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="distill-flower-")) if own_tmp else Path(workdir)
    home, app_dir, logs, out = work / "flwr-home", work / "app", work / "logs", work / "results.json"
    for d in (home, logs):
        d.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cfg = dataclasses.replace(cfg, out=str(out))
    write_app(app_dir, cfg)
    link_port, federation = free_port(), "distill-local"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{federation}"\n\n[superlink.{federation}]\n'
                                      f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1")
    if cfg.data_root:
        env["DISTILL_APPS_DATA"] = cfg.data_root
    procs = _Processes(env, work, logs)
    deadline = time.monotonic() + timeout
    try:
        link = procs.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port",
                           str(link_port), "--disable-runtime-dependency-installation")
        _wait_http(link_port, link, startup_timeout, logs / "superlink.log")
        for i in range(cfg.num_clients):
            procs.start(f"supernode-{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                        "--host", "127.0.0.1", "--port", str(free_port()),
                        "--node-config", f"partition-id={i} num-partitions={cfg.num_clients}")
        remaining = max(1.0, deadline - time.monotonic())
        run = procs.start("flwr-run", "flwr", "run", str(app_dir), federation, "--stream")
        if during_run is not None:
            threading.Thread(target=during_run, args=(dict(procs.named), logs), daemon=True).start()
        if not _wait_file(out, run, deadline):
            tail = (logs / "flwr-run.log").read_text(errors="replace")[-3000:]
            raise DistillError(f"The deployment produced no results within {remaining:.0f} s (flwr run exit "
                               f"code {run.poll()}). Logs under {logs}. Last output of flwr run:\n{tail}")
        results = json.loads(out.read_text())
        results["deployment"] = {"superlink": f"127.0.0.1:{link_port}", "supernodes": cfg.num_clients,
                                 "pids": [p.pid for p in procs.named.values()],
                                 "logs": str(logs) if keep_logs or not own_tmp else ""}
        return results
    finally:
        procs.stop_all()
        if own_tmp and not keep_logs:
            shutil.rmtree(work, ignore_errors=True)


class _Processes:
    """The processes of one deployment: each in its own session (so its children can be stopped with it), its
    output in ``logs/<name>.log``; :meth:`stop_all` stops them by pid, newest first."""

    def __init__(self, env: dict[str, str], cwd: Path, logs: Path) -> None:
        """Processes started for one deployment, by name, with their environment, working folder and log folder."""
        self.env, self.cwd, self.logs = env, cwd, logs
        self.named: dict[str, subprocess.Popen] = {}
        self._handles: list[Any] = []

    def start(self, name: str, program: str, *args: str) -> subprocess.Popen:
        """Start ``program args`` as process ``name``."""
        fh = open(self.logs / f"{name}.log", "wb")
        self._handles.append(fh)
        p = subprocess.Popen([_executable(program), *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True)
        self.named[name] = p
        return p

    def stop_all(self) -> None:
        """Stop every process started here (and its process group), then close the logs."""
        for p in reversed(list(self.named.values())):
            _stop(p)
        for fh in self._handles:
            fh.close()


def _wait_file(path: Path, run: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``path`` exists (the ServerApp's results), ``run`` has ended without it, or ``deadline``."""
    while time.monotonic() < deadline and not path.exists():
        if run.poll() is not None and not path.exists():
            time.sleep(1.0)  # the stream may end a moment before the ServerApp's file lands
            return path.exists()
        time.sleep(0.5)
    return path.exists()
