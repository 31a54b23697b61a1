"""Entry point of the HPO experiment's child processes: ``python -m distill_apps.integrations.nni trial FOLDER
ARCH_JSON SEED`` (one trial) or ``... hpo-experiment SPEC`` (the driver that runs the NNI manager)."""
import sys

from .experiment import run_driver, run_trial


def main(argv: list[str]) -> int:
    """Dispatch to :func:`run_trial` or :func:`run_driver`."""
    if argv[:1] == ["trial"] and len(argv) == 4:
        return run_trial(*argv[1:])
    if argv[:1] == ["hpo-experiment"] and len(argv) == 2:
        return run_driver(argv[1])
    print("usage: python -m distill_apps.integrations.nni trial FOLDER ARCH_JSON SEED | hpo-experiment SPEC",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
