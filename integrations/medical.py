"""Medical imaging: MedMNIST v2 (Yang et al., Scientific Data 2023) distillation, clinical metrics and
anonymisation checks.

- :func:`load_medmnist` -- any 2D flag the ``medmnist`` package knows (:func:`flags_2d`), at 28x28 or a larger
  size (64, 128, 224) when ``<flag>_<size>.npz`` is under ``<data root>/medmnist``; official train/val/test
  splits and the task type (binary, multiclass, multilabel, ordinal) ride on :class:`~distill_apps.RealData`.
- :func:`allocate_budget` / :func:`distill_medical` -- per-class image budgets, ``balanced`` (the same IPC for
  every class) or ``proportional`` (to the class frequencies, at least ``min_per_class`` each, so a rare class
  never disappears from the summary).
- :func:`clinical_metrics` / :func:`evaluate_medical` -- AUC and ACC exactly as the MedMNIST benchmark defines them
  (binary: the score of the positive class, threshold 0.5; multi-class and ordinal: one-vs-rest AUC averaged
  over classes, arg-max accuracy; multi-label: per-label AUC and accuracy averaged), plus balanced (class-weighted)
  accuracy and per-class sensitivity/specificity. AUC is computed here (Mann-Whitney rank statistic), not
  delegated, and tested against scikit-learn.
- :func:`anonymisation_check` -- the nearest real training image of every synthetic image by L2 and by SSIM
  (Wang et al., IEEE TIP 2004); a synthetic image is flagged when it is closer to a real image than real images
  are to each other (a low quantile of the real-to-nearest-other-real distances); a side-by-side PNG shows the
  closest pairs. Combine with ``dp-dm``/``dp-dc`` (:mod:`distill_apps.methods.private`) for a formal guarantee.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.data import DATASETS, data_root
from distill_apps.errors import ConfigError, DataError
from distill_apps.privacy import side_by_side_png
from distill_apps.fit_summary import fresh_model, run_range
from distill_apps.runtime import generator, pick_device

__all__ = ["SIZES", "flags_2d", "load_medmnist", "allocate_budget", "distill_medical", "select_subset", "auc_binary",
           "clinical_metrics", "evaluate_medical", "ssim", "anonymisation_check"]

SIZES = (28, 64, 128, 224)


def _medmnist():
    """The medmnist package, or an ImportError naming the extra to install."""
    try:
        import medmnist
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise ImportError("MedMNIST needs the medical extra: pip install 'distill-apps[medical]'") from exc
    return medmnist


def flags_2d() -> list[str]:
    """Every 2D MedMNIST flag the installed ``medmnist`` package knows."""
    return sorted(k for k in _medmnist().INFO if "3d" not in k)


def load_medmnist(flag: str, root: str | None = None, size: int = 28, download: bool = False) -> RealData:
    """A MedMNIST 2D dataset with its official splits and task type (builds on the ``medmnist:<flag>`` loader)."""
    _medmnist()
    if flag not in flags_2d():
        raise DataError(f"Unknown or non-2D MedMNIST flag {flag!r}. Known 2D flags: {', '.join(flags_2d())}.")
    if size not in SIZES:
        raise ConfigError(f"MedMNIST sizes are {SIZES}; got {size}.")
    real = DATASETS.get("medmnist").loader(data_root(root), flag=flag, size=size, download=download)
    if size != 28:
        real.name = f"medmnist:{flag}@{size}"
    return real


# ---------------------------------------------------------------------- budgets and distillation
def allocate_budget(counts: list[int], total: int, mode: str = "balanced", min_per_class: int = 1) -> list[int]:
    """Images per class for a total budget: ``balanced`` (equal) or ``proportional`` (largest remainder), every
    class getting at least ``min_per_class`` and at most its own size."""
    k = len(counts)
    if any(c < 1 for c in counts):
        empty = [i for i, c in enumerate(counts) if c < 1]
        raise DataError(f"Classes {empty} have no training images; a summary cannot represent them.")
    if total < k * min_per_class:
        raise ConfigError(f"A budget of {total} images cannot give {min_per_class} to each of {k} classes: "
                          f"raise it to {k * min_per_class} or more.")
    if mode == "balanced":
        out = [total // k + (1 if i < total % k else 0) for i in range(k)]
    elif mode == "proportional":
        free = total - k * min_per_class
        share = [free * c / sum(counts) for c in counts]
        out = [min_per_class + int(math.floor(s)) for s in share]
        for i in sorted(range(k), key=lambda i: share[i] - math.floor(share[i]), reverse=True)[:total - sum(out)]:
            out[i] += 1
    else:
        raise ConfigError(f"Budget mode must be balanced or proportional; got {mode!r}.")
    out = [min(o, c) for o, c in zip(out, counts)]
    while sum(out) < total and any(o < c for o, c in zip(out, counts)):  # a capped class's share goes on
        i = min((i for i in range(k) if out[i] < counts[i]),
                key=lambda i: out[i] if mode == "balanced" else -counts[i] / (out[i] + 1))
        out[i] += 1
    return out


def distill_medical(method: str, real: RealData, ipc: int, *, budget: str = "balanced", steps: int | None = None,
                    config: dict | None = None, model: str = "convnet", seed: int = 0, device: str = "auto",
                    progress: bool = False) -> SyntheticSet:
    """Distil ``real`` with ``ipc * classes`` images in all, split per class by ``budget``.

    One :func:`distill_apps.distill` run per distinct budget ``b``, on the classes that hold at least ``b``
    images (``real.restrict(...)``, their real images; every class when all do), so a method sees as many
    classes as the data allows (a classifier-based method on a one-class view would learn nothing); the run's
    images of the classes whose budget is ``b`` are kept in the dataset's class ids (``relabel``). The parts
    are joined in class order and ``meta["class_budget"]`` records the split. ``steps=None`` runs each method's
    quick preset. Multi-label soft rows keep only the labels of the classes a run saw.
    """
    per_class = allocate_budget(real.class_counts(), ipc * real.num_classes, budget)
    run = dict(steps=steps, budget="quick", model=model, seed=seed, device=device, config=config, progress=progress)
    if len(set(per_class)) == 1:
        s = da.distill(method, real, per_class[0], **run)
        s.meta.update(class_budget=per_class, budget_mode=budget)
        return s
    counts, parts = real.class_counts(), []
    for b in sorted(set(per_class)):
        seen = [c for c in range(real.num_classes) if counts[c] >= b]  # holds the group: budgets are capped
        data = real if len(seen) == real.num_classes else real.restrict(seen)
        s = da.distill(method, data, b, **run)
        s = s if data is real else s.relabel(seen, real.num_classes, dataset=real.name)
        group = torch.tensor([c for c, n in enumerate(per_class) if n == b])
        keep = torch.isin(s.y, group)
        parts.append((s.x[keep], s.y[keep], None if s.soft is None else s.soft[keep], s))
    y = torch.cat([p[1] for p in parts])
    order = torch.argsort(y, stable=True)
    last = parts[-1][3]
    meta = {**last.meta, "ipc": ipc, "class_budget": per_class, "budget_mode": budget}
    soft = None if last.soft is None else torch.cat([p[2] for p in parts])[order]
    return SyntheticSet(x=torch.cat([p[0] for p in parts])[order], y=y[order], num_classes=real.num_classes,
                        image_shape=real.image_shape, mean=real.mean, std=real.std, meta=meta, soft=soft,
                        label_kind=last.label_kind)


def select_subset(real: RealData, ipc: int, *, budget: str = "balanced", seed: int = 0):
    """A random real subset with the same per-class budgets (the baseline a summary must beat)."""
    per_class = allocate_budget(real.class_counts(), ipc * real.num_classes, budget)
    g = generator("medical-subset", seed)
    idx = torch.cat([real.sample(c, n, g) for c, n in enumerate(per_class)])
    anchors = torch.arange(real.num_classes).repeat_interleave(torch.tensor(per_class))
    multi = {"soft": real.y_train[idx].float().cpu(), "label_kind": "multilabel"} if real.multilabel else {}
    return SyntheticSet(x=real.x_train[idx].cpu(), y=anchors, num_classes=real.num_classes, **multi,
                        image_shape=real.image_shape, mean=real.mean, std=real.std,
                        meta={"method": f"random-{budget}", "dataset": real.name, "ipc": ipc,
                              "class_budget": per_class, "seed": seed})


# ---------------------------------------------------------------------- metrics
def auc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic with average ranks for ties (equals the ROC curve's area)."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    npos, nneg = int(y_true.sum()), int((~y_true).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def clinical_metrics(logits: torch.Tensor, y: torch.Tensor, task: str, threshold: float = 0.5) -> dict[str, Any]:
    """MedMNIST's AUC and ACC for ``task`` plus balanced accuracy and per-class sensitivity/specificity."""
    logits = logits.detach().float().cpu()
    y_np = y.detach().cpu().numpy()
    if task == "multilabel":
        p = torch.sigmoid(logits).numpy()
        pred = p > threshold
        aucs = [auc_binary(y_np[:, i], p[:, i]) for i in range(p.shape[1])]
        return {"auc": float(np.nanmean(aucs)), "acc": float((pred == y_np.astype(bool)).mean(0).mean()),
                "per_label_auc": aucs}
    p = torch.softmax(logits, 1).numpy()
    k = p.shape[1]
    if task == "binary":
        pred = (p[:, -1] > threshold).astype(int)
        auc = auc_binary(y_np == k - 1, p[:, -1])
    else:  # multiclass, ordinal: one-vs-rest averaged, as MedMNIST's getAUC
        pred = p.argmax(1)
        auc = float(np.nanmean([auc_binary(y_np == i, p[:, i]) for i in range(k)]))
    per_class = []
    for c in range(k):
        pos, hit = y_np == c, pred == c
        sens = float((pos & hit).sum() / max(1, pos.sum()))
        spec = float((~pos & ~hit).sum() / max(1, (~pos).sum()))
        per_class.append({"class": c, "n": int(pos.sum()), "sensitivity": sens, "specificity": spec})
    return {"auc": auc, "acc": float((pred == y_np).mean()),
            "balanced_acc": float(np.mean([r["sensitivity"] for r in per_class])), "per_class": per_class}


def evaluate_medical(summary, real: RealData, *, model: str = "convnet", runs: int = 3, epochs: int = 300,
                     lr: float | None = None, seed: int = 0, device: str = "auto", augment: str | None = None,
                     class_weighted: bool = False, progress: bool = False) -> dict[str, Any]:
    """Train ``runs`` fresh models on ``summary`` (the field's protocol, :func:`distill_apps.train_on_summary`:
    ``lr=None`` takes the summary's learned lr, else 0.01) and report MedMNIST AUC/ACC on the official test
    split, mean and std, with the clinical per-class figures of run 0. ``augment`` names an evaluation
    augmentation (``dsa``, ``dc``, ``none``).

    ``class_weighted=True`` trains on a class-balanced resampling of the summary (each class equally often), the
    usual remedy when a proportional summary keeps the data's imbalance.
    """
    dev = pick_device(device)
    m = summary.materialize()
    x, yv = m.x, (m.soft if m.soft is not None else m.y)
    if class_weighted:
        counts = torch.bincount(m.y, minlength=real.num_classes).clamp(min=1)
        reps = (counts.max() / counts[m.y]).round().long()
        idx = torch.arange(len(m.y)).repeat_interleave(reps)
        x, yv = x[idx], yv[idx]
    data = (x.to(dev), yv.to(dev), m.label_kind)
    rows = []
    for r in run_range(runs, f"evaluate {model} ({real.name})", progress):
        g = generator("evaluate-medical", seed, r)
        net = fresh_model(model, real, g, dev)
        da.train_on_summary(summary, net, epochs=epochs, lr=lr, augment=augment, data=real, training_data=data,
                            generator=g, progress=progress)
        rows.append(da.score(net, real, metric=lambda logits, y: clinical_metrics(logits, y, real.task)))
    auc, acc = [r["auc"] for r in rows], [r["acc"] for r in rows]
    return {"auc_mean": float(np.mean(auc)), "auc_std": float(np.std(auc)), "acc_mean": float(np.mean(acc)),
            "acc_std": float(np.std(acc)), "runs": runs, "epochs": epochs, "model": model, "task": real.task,
            "balanced_acc_mean": float(np.mean([r.get("balanced_acc", float("nan")) for r in rows])),
            "per_class": rows[0].get("per_class"), "images": len(m.y),
            "class_counts": torch.bincount(m.y, minlength=real.num_classes).tolist()}


# ---------------------------------------------------------------------- anonymisation
def ssim(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of image pairs ``a[i]``/``b[i]`` (N, C, H, W) in [0, data_range], averaged over channels.

    Same definition as scikit-image's ``structural_similarity`` defaults: a ``win x win`` uniform window, sample
    covariances, ``K1 = 0.01``, ``K2 = 0.03``, and the mean over the window positions away from the border.
    """
    a, b = a.double(), b.double()
    f = lambda t: F.avg_pool2d(t, win, stride=1)  # noqa: E731  uniform window at valid positions == skimage's crop
    ua, ub = f(a), f(b)
    cov = win ** 2 / (win ** 2 - 1)
    vaa, vbb, vab = cov * (f(a * a) - ua ** 2), cov * (f(b * b) - ub ** 2), cov * (f(a * b) - ua * ub)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    return s.mean(dim=(1, 2, 3)).float()


def _pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images de-normalised to [0, 1] on the CPU, for PNGs."""
    x = x.detach().float().cpu()
    if mean and std:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return x.clamp(0, 1)


def _nearest_both(q: torch.Tensor, ref: torch.Tensor, candidates: int, exclude: torch.Tensor | None = None):
    """Nearest ``ref`` image of every ``q`` image by L2 (exact) and by SSIM (best among the ``candidates``
    L2-nearest, where SSIM's best match lies in practice)."""
    qf, rf = q.flatten(1), ref.flatten(1)
    d = torch.cdist(qf, rf)
    if exclude is not None:
        d[torch.arange(len(q)), exclude] = float("inf")
    k = min(candidates, len(ref) - (exclude is not None))
    dk, ik = d.topk(k, dim=1, largest=False)
    s = ssim(q.repeat_interleave(k, 0), ref[ik.flatten()]).view(len(q), k)
    sbest, j = s.max(1)
    return dk[:, 0], ik[:, 0], sbest, ik[torch.arange(len(q)), j]


def anonymisation_check(summary, real: RealData, *, png: str | Path | None = None, quantile: float = 0.5,
                        reference: int = 500, candidates: int = 32, pairs: int = 12, seed: int = 0) -> dict[str, Any]:
    """Flag synthetic images nearer to a real training image than real images are to each other.

    Thresholds come from ``reference`` random training images and their nearest *other* training image: the
    ``quantile`` of those L2 distances and the ``1 - quantile`` quantile of those SSIMs. The default (0.5, the
    median) is deliberately strict: MedMNIST sets hold near-duplicates (in BreastMNIST a quarter of the images
    have a neighbour at SSIM > 0.95), so a low quantile would pass images that are visibly copies. A synthetic image is
    flagged when its nearest real image is closer (L2) or more similar (SSIM) than that. ``passed`` is True when
    nothing is flagged. The PNG shows (synthetic | nearest real) pairs, flagged ones first.
    """
    m = summary.materialize()
    xs, xr = _pixels(m.x, summary.mean, summary.std), _pixels(real.x_train, real.mean, real.std)
    if tuple(xs.shape[1:]) != tuple(xr.shape[1:]):
        raise DataError(f"Summary images are {tuple(xs.shape[1:])} but {real.name} images are "
                        f"{tuple(xr.shape[1:])}: check the summary against the data it came from.")
    g = torch.Generator().manual_seed(seed)
    ref = torch.randperm(len(xr), generator=g)[:reference]
    rl2, _, rss, _ = _nearest_both(xr[ref], xr, candidates, exclude=ref)
    l2_thr, ssim_thr = float(torch.quantile(rl2, quantile)), float(torch.quantile(rss, 1 - quantile))
    sl2, sl2_i, sss, sss_i = _nearest_both(xs, xr, candidates)
    flagged = (sl2 <= l2_thr) | (sss >= ssim_thr)
    out = {"passed": not bool(flagged.any()), "flagged": flagged.nonzero().flatten().tolist(),
           "n_flagged": int(flagged.sum()), "synthetic": len(xs), "quantile": quantile,
           "l2_threshold": l2_thr, "ssim_threshold": ssim_thr,
           "syn_nearest_l2_min": float(sl2.min()), "syn_nearest_l2_median": float(sl2.median()),
           "syn_best_ssim_max": float(sss.max()), "syn_best_ssim_median": float(sss.median()),
           "real_nearest_l2_median": float(rl2.median()), "real_best_ssim_median": float(rss.median()),
           "nearest_real_l2": sl2_i.tolist(), "nearest_real_ssim": sss_i.tolist()}
    if png is not None:
        order = torch.argsort(sl2 - 1e6 * flagged.float())[:pairs]
        names = real.class_names
        ys, yr = m.y.cpu(), real.y_train.cpu()
        multi = ys.dim() > 1 or yr.dim() > 1
        cls = (lambda y: "multi-label") if multi else (lambda y: names[int(y)])  # noqa: E731
        side_by_side_png(xs[order], xr[sl2_i[order]], png,
                         left_titles=[("FLAGGED " if bool(flagged[i]) else "") + f"synthetic, {cls(ys[i])}"
                                      for i in order.tolist()],
                         right_titles=[f"real #{int(sl2_i[i])}, {cls(yr[sl2_i[i]])}\nL2 {float(sl2[i]):.2f}, "
                                       f"SSIM {float(sss[i]):.2f}" for i in order.tolist()],
                         title=f"thresholds: L2 {l2_thr:.2f}, SSIM {ssim_thr:.2f}")
        out["png"] = str(png)
    return out
