"""Fair scores for distilled data: DD-Ranking's HLR, IOR, LRS and ARS (Li et al. 2025, "DD-Ranking: Rethinking
the Evaluation of Dataset Distillation", arXiv:2505.13300), beside a random real subset at the same IPC.

Soft labels and strong augmentation lift random real images too; these scores separate what the distilled
images add from what the teacher and the augmentation add. All accuracies are fractions in [0, 1]:

- ``HLR = acc(real, hard) - acc(syn, hard)``: hard-label recovery, how far the summary under hard labels stays
  below the full real training set (lower is better);
- ``IOR = acc(syn, P) - acc(random, P)``: improvement over a random class-balanced real subset of the same IPC
  under the summary's own protocol ``P`` (``train`` or ``softlabel``);
- ``LRS = (exp(a) - exp(-1)) / (e - exp(-1))`` with ``a = w IOR - (1 - w) HLR``, label-robust score in [0, 1];
- ``ARS = (exp(b) - exp(-1)) / (e - exp(-1))`` with ``b = g (acc(syn, P+aug) - acc(random, P+aug)) +
  (1 - g) (acc(syn, P-aug) - acc(random, P-aug))``, augmentation-robust score in [0, 1];

with the published default weights ``w = g = 0.5``. (DD-Ranking's code feeds percentages into ``exp``; the paper
normalises accuracy differences in [-1, 1] to [0, 1], which is what fractions give, and what we compute.)

Differences from DD-Ranking's reference runs, stated in every result: no learning-rate search (one run of each
protocol's own schedule), and the full-data accuracy is the test accuracy of ``model`` trained on the whole real
training split for ``full_data_epochs`` epochs through :func:`~distill_apps.train.fit` (cached as a teacher),
unless ``full_data_accuracy`` is given.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .data import RealData
from .errors import ConfigError
from .summary import SyntheticSet

DEFAULT_WEIGHT = 0.5  # DD-Ranking's default w (LRS) and gamma (ARS)


def _check_acc(**accs: float) -> None:
    """Refuse accuracies outside [0, 1] (percentages passed by mistake)."""
    for k, v in accs.items():
        if not (0.0 <= float(v) <= 1.0):
            raise ConfigError(f"{k} must be an accuracy in [0, 1] (a fraction, not a percentage); got {v}.")


def _check_weight(w: float) -> None:
    """Refuse a DD-Ranking weight outside [0, 1]."""
    if not 0.0 <= w <= 1.0:
        raise ConfigError(f"DD-Ranking weights lie in [0, 1]; got {w}.")


def normalise(v: float) -> float:
    """DD-Ranking's map of a score in [-1, 1] to [0, 1]: ``(e^v - e^-1) / (e - e^-1)``."""
    return (math.exp(v) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hlr(real_hard: float, syn_hard: float) -> float:
    """Hard-label recovery: full real data accuracy minus the summary's accuracy, both with hard labels."""
    _check_acc(real_hard=real_hard, syn_hard=syn_hard)
    return float(real_hard) - float(syn_hard)


def ior(syn: float, rnd: float) -> float:
    """Improvement over random: the summary's accuracy minus a random subset's, under the same protocol."""
    _check_acc(syn=syn, rnd=rnd)
    return float(syn) - float(rnd)


def lrs(hlr_value: float, ior_value: float, weight: float = DEFAULT_WEIGHT) -> float:
    """Label-robust score: ``normalise(w IOR - (1 - w) HLR)``."""
    _check_weight(weight)
    return normalise(weight * ior_value - (1.0 - weight) * hlr_value)


def ars(syn_aug: float, rnd_aug: float, syn_noaug: float, rnd_noaug: float, weight: float = DEFAULT_WEIGHT) -> float:
    """Augmentation-robust score: ``normalise(g (syn_aug - rnd_aug) + (1 - g) (syn_noaug - rnd_noaug))``."""
    _check_acc(syn_aug=syn_aug, rnd_aug=rnd_aug, syn_noaug=syn_noaug, rnd_noaug=rnd_noaug)
    _check_weight(weight)
    return normalise(weight * (syn_aug - rnd_aug) + (1.0 - weight) * (syn_noaug - rnd_noaug))


def hard_label_view(summary: SyntheticSet) -> SyntheticSet:
    """The summary with its soft labels dropped (its images and class ids only)."""
    m = summary.materialize()
    if m.soft is None or m.label_kind == "multilabel":
        return m
    return replace(m, soft=None, label_kind="hard")


def random_subset(real: RealData, ipc: int, seed: int = 0, eval_augment: str | None = None,
                  device: str = "auto") -> SyntheticSet:
    """A class-balanced random real subset at ``ipc`` (the ``random`` method), evaluated like the summary (the
    baseline the CLI and the fair scores set beside a summary)."""
    from .engine import distill

    rnd = distill("random", real, ipc, seed=seed, device=device, progress=False)
    rnd.meta["eval_augment"] = eval_augment
    return rnd


def full_data_accuracy(real: RealData, model: str, epochs: int, seed: int = 0, device: str = "auto",
                       progress: bool = False) -> float:
    """Test accuracy of ``model`` trained on the whole training split (cached, as a teacher)."""
    from .teachers import train_teacher

    return train_teacher(real, model, epochs=epochs, seed=seed, device=device, progress=progress).test_accuracy


def fair_scores(summary: SyntheticSet, real: RealData, *, protocol: str = "train", teacher=None,
                model: str = "convnet", runs: int = 1, epochs: int | None = None, seed: int = 0,
                device: str = "auto", full_data_acc: float | None = None, full_data_epochs: int = 2,
                weight: float = DEFAULT_WEIGHT, aug_weight: float = DEFAULT_WEIGHT, progress: bool = False,
                base: Any = None, attack: str | None = None, eps=(), attack_n: int | None = 1000,
                cache: dict | None = None) -> dict[str, Any]:
    """Accuracy of ``summary`` and of a random subset at its IPC under ``protocol`` (with and without the
    protocol's augmentation) and with hard labels, and DD-Ranking's HLR, IOR, LRS and ARS from them.

    ``teacher`` is passed to the softlabel protocol for both the summary and the random subset (default: the
    summary's own teacher). ``base``: an :class:`~distill_apps.evaluate.EvalResult` of ``summary`` under
    ``protocol`` already computed (reused as the with-augmentation accuracy). With ``attack`` (``fgsm``/``pgd``)
    and ``eps``, the students of the with-augmentation and hard-label evaluations are also attacked
    (:mod:`distill_apps.robustness`). ``cache``: a dict shared between calls (e.g. several methods at one IPC)
    in which the random subset's evaluations are kept, so they run once.
    """
    from .evaluate import evaluate
    from .robustness import check_eps, robust_evaluate

    _check_weight(weight)
    _check_weight(aug_weight)
    if attack is not None:
        eps = check_eps(eps)
    kw: dict[str, Any] = dict(model=model, runs=runs, epochs=epochs, seed=seed, device=device, progress=progress)
    pkw: dict[str, Any] = {}
    t_sha = None
    if protocol == "softlabel":
        from .runtime import pick_device
        from .softlabel import teacher_for

        t = teacher_for(summary, real, teacher, pick_device(device))
        if t is None:
            raise ConfigError("Fair scores under the softlabel protocol need a teacher for the random subset too: "
                              "pass --teacher PATH (or evaluate a summary that names one).")
        pkw["teacher"], t_sha = t, t.sha256
    elif teacher is not None:
        raise ConfigError(f"A teacher only applies to protocol 'softlabel', not {protocol!r}.")
    cache = {} if cache is None else cache
    rnd = random_subset(real, summary.ipc, seed, summary.meta.get("eval_augment"))
    is_random = summary.meta.get("method") == "random" and summary.meta.get("train_index") == rnd.meta["train_index"]
    hard = hard_label_view(summary)
    seconds = {"total": 0.0}

    def ev(which: str, s: SyntheticSet, proto: str, augment: Any, attacked: bool):
        """Evaluate one summary (or the random subset, cached) under one protocol and augmentation, optionally under
        attack."""
        key = ("random", real.name, summary.ipc, seed, model, runs, epochs, proto, augment, t_sha, attacked,
               attack, tuple(eps) if attacked else ())
        if (which == "random" or is_random) and key in cache:
            return cache[key]
        extra = pkw if proto == "softlabel" else {}
        aug_kw = {} if augment == "default" else {"augment": augment}
        if attacked and attack is not None:
            r = robust_evaluate(s, real, attack=attack, eps=eps, protocol=proto, n=attack_n, **kw, **extra, **aug_kw)
        else:
            r = evaluate(s, real, protocol=proto, **kw, **extra, **aug_kw)
        seconds["total"] += r.seconds
        if which == "random" or is_random:
            cache[key] = r
        return r

    syn_aug = base if base is not None and attack is None else ev("syn", summary, protocol, "default", True)
    rnd_aug = ev("random", rnd, protocol, "default", True)
    syn_noaug = ev("syn", summary, protocol, None, False)
    rnd_noaug = ev("random", rnd, protocol, None, False)
    syn_hard = ev("syn", hard, "train", None, True)
    rnd_hard = ev("random", rnd, "train", None, True)
    if full_data_acc is None:
        full_data_acc = full_data_accuracy(real, model, full_data_epochs, seed, device, progress)
        full_src = f"{model} trained on all {len(real.y_train)} training images for {full_data_epochs} epochs"
    else:
        full_src = "given"
    h = hlr(full_data_acc, syn_hard.accuracy_mean)
    i = ior(syn_aug.accuracy_mean, rnd_aug.accuracy_mean)
    out = {
        "protocol": protocol, "ipc": summary.ipc, "weights": {"lrs_w": weight, "ars_gamma": aug_weight},
        "accuracy": {"syn": syn_aug.accuracy_mean, "random": rnd_aug.accuracy_mean,
                     "syn_noaug": syn_noaug.accuracy_mean, "random_noaug": rnd_noaug.accuracy_mean,
                     "syn_hard": syn_hard.accuracy_mean, "random_hard": rnd_hard.accuracy_mean,
                     "full_data_hard": float(full_data_acc)},
        "augment": {"with": syn_aug.augment, "without": None},
        "hlr": h, "ior": i, "lrs": lrs(h, i, weight),
        "ars": ars(syn_aug.accuracy_mean, rnd_aug.accuracy_mean, syn_noaug.accuracy_mean, rnd_noaug.accuracy_mean,
                   aug_weight),
        "full_data_source": full_src, "runs": runs, "model": model, "eval_seconds": round(seconds["total"], 1),
        "notes": "DD-Ranking scores on accuracies in [0, 1]; no lr search; hard labels trained with protocol "
                 "'train' without augmentation; random subset drawn with the same seed and IPC.",
    }
    if attack is not None:
        out["robust"] = {"attack": attack, "eps": list(eps), **{
            name: r.extra["robust"]["accuracy"] for name, r in
            (("syn", syn_aug), ("random", rnd_aug), ("syn_hard", syn_hard), ("random_hard", rnd_hard))},
            **{k: v for k, v in syn_hard.extra["robust"].items() if k in ("steps", "step_size", "n_test", "norm")}}
    return out
