"""The only places where this adapter reaches past NNI's public API, each with the reason no public API serves.

Checked against NNI 3.0 (``nni==3.0``, the version the ``nas`` extra pins). On another version :func:`check_host`
warns (they touch NNI internals, which move between releases), and each hook checks that what it relies on is
still there: hook 1 refuses to run without its two NNI methods (NNI would write under ``~``), hook 2 is skipped
with a warning.

1. :class:`SandboxedNasExperiment` -- NNI writes every experiment into a manifest,
   ``~/nni-experiments/.experiment``, whose folder is fixed when ``nni.tools.nnictl.constants`` is imported
   (``NNI_HOME_DIR`` from ``~``) and bound as the default argument of ``Experiments(home_dir=...)``; no config
   field, environment variable read at run time, or argument of ``NasExperiment.start`` moves it. NNI 3.0's
   ``NasExperiment`` writes it in two overridable hooks, ``_start_without_nni_manager`` and
   ``_stop_without_nni_manager`` (sequential engine, no NNI manager); this subclass writes the same entry into
   the working directory instead, so a search writes nothing under ``~``.
2. :func:`patient_manager_start` -- ``Experiment.run`` starts the NNI manager (Node) and polls its REST server
   3 times, 1 s apart (``nni.experiment.launcher._check_rest_server(port, retry=3)``), then gives up; neither
   ``Experiment.run``/``start`` nor the config exposes the retry count, and on a busy 2-core machine Node needs
   longer. In the dedicated child process that drives the HPO experiment (never in the user's process), the
   module-level function is wrapped to retry 60 times.
3. :data:`LOOPBACK_JS` -- the NNI manager's REST server listens on every interface (``app.listen(port)`` in
   NNI 3.0's ``rest_server``); the config's ``nni_manager_ip`` only sets the address trials use. A Node
   ``--require`` preload (``NODE_OPTIONS``, a public Node mechanism) passes ``127.0.0.1`` to ``listen`` calls
   that name only a port.
"""
from __future__ import annotations

import functools
import inspect
import time
import warnings
from pathlib import Path
from typing import Any

import nni
from nni.nas.experiment import NasExperiment

from distill_apps.errors import ConfigError

#: the NNI release these hooks were written and checked against
CHECKED_NNI = "3.0"


def check_host() -> None:
    """Warn when NNI is not :data:`CHECKED_NNI`, the version the private hooks below were checked against."""
    version = str(getattr(nni, "__version__", "unknown"))
    if version.split("+")[0] != CHECKED_NNI:
        warnings.warn(f"distill_apps.integrations.nni was checked against NNI {CHECKED_NNI} and reaches into its "
                      f"internals (distill_apps/integrations/nni/host_compat.py); this is NNI {version}. If a "
                      "search misbehaves, install the pinned version: pip install 'distill-apps[nas]'.",
                      RuntimeWarning, stacklevel=3)


class SandboxedNasExperiment(NasExperiment):
    """``NasExperiment`` whose experiment manifest lives in ``manifest_dir``, not ``~/nni-experiments`` (hook 1)."""

    def __init__(self, *args: Any, manifest_dir: Path, **kw: Any) -> None:
        """NasExperiment's arguments plus ``manifest_dir``; refuses an NNI without the two hooks it overrides."""
        check_host()
        missing = [h for h in ("_start_without_nni_manager", "_stop_without_nni_manager")
                   if not callable(getattr(NasExperiment, h, None))]
        if missing:
            raise ConfigError(f"NNI {nni.__version__}'s NasExperiment has no {', '.join(missing)}, where this adapter "
                              "keeps the experiment manifest out of ~; install the pinned NNI: pip install "
                              "'distill-apps[nas]'.")
        super().__init__(*args, **kw)
        self.manifest_dir = Path(manifest_dir)

    def _manifest(self):
        """NNI's experiment manifest, kept in ``manifest_dir``."""
        from nni.tools.nnictl.config_utils import Experiments

        return Experiments(home_dir=str(self.manifest_dir))

    def _start_without_nni_manager(self) -> None:  # NNI 3.0 hook: the manifest entry of a new experiment
        """Record the new experiment in the sandboxed manifest (NNI 3.0 hook)."""
        self._manifest().add_experiment(self.id, "N/A", int(time.time() * 1000), "N/A", self.config.experiment_name,
                                        "N/A", status="RUNNING", tag=["retiarii"],
                                        logDir=str(self.config.experiment_working_directory))

    def _stop_without_nni_manager(self) -> None:  # NNI 3.0 hook: the manifest entry of a stopped experiment
        """Mark the experiment stopped in the sandboxed manifest (NNI 3.0 hook)."""
        manifest = self._manifest()
        manifest.update_experiment(self.id, "status", "STOPPED")
        manifest.update_experiment(self.id, "endTime", int(time.time() * 1000))


def patient_manager_start(retries: int = 60) -> None:
    """Let ``Experiment.run`` wait up to ``retries`` seconds for the NNI manager's REST server (hook 2).

    Call it only in a process that exists to run one experiment (the HPO driver child process)."""
    check_host()
    from nni.experiment import launcher

    check = getattr(launcher, "_check_rest_server", None)
    if check is None or "retry" not in inspect.signature(check).parameters:
        warnings.warn(f"NNI {nni.__version__}'s launcher has no retry count to raise; the NNI manager gets NNI's own "
                      "start-up wait.", RuntimeWarning, stacklevel=2)
        return
    launcher._check_rest_server = functools.partial(check, retry=retries)


#: Node preload that binds NNI's REST server to loopback only (hook 3)
LOOPBACK_JS = """// distill-apps: bind NNI's REST server (app.listen(port)) to loopback only
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
"""
