"""HPO through NNI's own ``Experiment("local")`` and its NNI manager, sandboxed: the manager runs in a child
process whose HOME, config and experiment folders are the working directory and whose REST server listens on
127.0.0.1 only; every trial is a process that trains one candidate on the saved proxy task."""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nni

import distill_apps as da
from distill_apps.errors import ConfigError
from distill_apps.runtime import generator

from .host_compat import LOOPBACK_JS, patient_manager_start
from .proxy import ProxyTask, evaluate_on_proxy
from .search import HPO_KEYS, SearchResult
from .space import ConvNetSpace, build_candidate

__all__ = ["hpo_experiment", "sandbox_env", "run_driver", "run_trial"]


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the NNI manager's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sandbox_env(work: Path) -> dict[str, str]:
    """The environment of the HPO driver: HOME, NNI's config and caches inside ``work``, the loopback preload
    for Node, and the ``PYTHONPATH`` under which this process found ``distill_apps`` (for the trials)."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (work / "nni-config").mkdir(parents=True, exist_ok=True)
    preload = work / "loopback.js"
    preload.write_text(LOOPBACK_JS)
    env = dict(os.environ)
    node_opts = env.get("NODE_OPTIONS", "")
    env.update(HOME=str(home), NNI_CONFIG_DIR=str(work / "nni-config"), XDG_CACHE_HOME=str(work / "cache"),
               NODE_OPTIONS=f"{node_opts} --require {preload}".strip(), PYTHONUNBUFFERED="1")
    # the trial processes import distill_apps from wherever this process did
    pkg_root = str(Path(da.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), pkg_root) if p)
    return env


def hpo_experiment(task: ProxyTask, arch: dict[str, Any], space: dict[str, dict[str, Any]], trials: int,
                   seed: int, work: Path, port: int | None, timeout: float) -> SearchResult:
    """TPE through NNI's HPO ``Experiment("local")``: a driver child process (:func:`run_driver`) runs the NNI
    manager with its REST server on 127.0.0.1; each trial is a ``python -m distill_apps.integrations.nni
    trial`` process (:func:`run_trial`) reading its parameters with ``nni.get_next_parameter``."""
    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}.")
    task.save(work / "task")
    spec = {"arch": arch, "space": space, "trials": trials, "seed": seed, "port": port or _free_port(),
            "work": str(work), "python": sys.executable}
    (work / "hpo_spec.json").write_text(json.dumps(spec, indent=1))
    t0 = time.perf_counter()
    with open(work / "hpo_driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "distill_apps.integrations.nni", "hpo-experiment",
                                 str(work / "hpo_spec.json")], env=sandbox_env(work), cwd=str(work), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
            raise ConfigError(f"the NNI HPO experiment ran past {timeout:.0f} s and was stopped; see "
                              f"{work / 'hpo_driver.log'}; lower trials or proxy epochs.") from None
    out = work / "hpo_result.json"
    if rc != 0 or not out.exists():
        raise ConfigError(f"the NNI HPO experiment failed (exit {rc}); see {work / 'hpo_driver.log'}.")
    res = json.loads(out.read_text())
    return SearchResult(res["best"], res["best_accuracy"], res["trials"], "tpe-experiment",
                        time.perf_counter() - t0, str(work), res.get("experiment_id", ""))


def trial_command(spec: dict[str, Any], work: Path) -> str:
    """The trial's shell command (NNI runs it through a shell), built from an argument list, every argument quoted."""
    return shlex.join([str(spec["python"]), "-m", "distill_apps.integrations.nni", "trial", str(work / "task"),
                       json.dumps(spec["arch"]), str(int(spec["seed"]))])


def run_driver(spec_path: str) -> int:
    """Child process of :func:`hpo_experiment`: run NNI's HPO ``Experiment`` with TPE, write the result."""
    from nni.experiment import Experiment

    patient_manager_start(60)  # a busy machine needs more than NNI's 3 s to start Node (see host_compat)
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    exp = Experiment("local")
    c = exp.config
    c.experiment_name = "distill-apps-hpo"
    c.trial_command = trial_command(spec, work)
    c.trial_code_directory = str(work)
    c.search_space = spec["space"]
    c.tuner.name = "TPE"
    c.tuner.class_args = {"optimize_mode": "maximize", "seed": int(spec["seed"])}
    c.max_trial_number = int(spec["trials"])
    c.trial_concurrency = 1
    c.experiment_working_directory = str(work / "experiments")
    c.nni_manager_ip = "127.0.0.1"
    c.training_service.use_active_gpu = False
    try:
        exp.run(int(spec["port"]))
        rows = []
        for t in exp.export_data():
            rows.append({"sample": dict(t.parameter), "accuracy": float(t.value)
                         if not isinstance(t.value, dict) else float(t.value["default"])})
    finally:
        exp.stop()
    if not rows:
        print(f"no trial reported a result; see {work / 'experiments'}", file=sys.stderr)
        return 1
    best = max(rows, key=lambda r: r["accuracy"])
    (work / "hpo_result.json").write_text(json.dumps({"best": best["sample"], "best_accuracy": best["accuracy"],
                                                      "trials": rows, "experiment_id": exp.id}))
    return 0


def run_trial(folder: str, arch_json: str, seed: str) -> int:
    """One HPO trial process: read the tuner's parameters, train on the proxy, report the accuracy."""
    task = ProxyTask.load(folder)
    params = nni.get_next_parameter() or {}
    s = task.summary
    space = ConvNetSpace(s.image_shape[0], s.num_classes, s.image_shape[1:])
    model = build_candidate(space, json.loads(arch_json), generator("nas-candidate-init", int(seed)))
    hp = {k: (int(v) if k in ("epochs", "batch_size") else float(v)) for k, v in params.items() if k in HPO_KEYS}
    evaluate_on_proxy(model, task, seed=int(seed), **hp)
    return 0
