"""Privacy audits of a summary: what does it leak about the real training images?

- :func:`membership_inference`: the loss-threshold attack (Yeom et al., CSF 2018) and the confidence attack
  (Salem et al., NDSS 2019): a model's loss is lower on its training members; the attack's ROC AUC and its true
  positive rate at low false positive rates (Carlini et al., S&P 2022, "Membership Inference Attacks From First
  Principles", argue for the latter). :func:`audit_summary` trains a model on the summary and attacks it with real
  training images (members of the data the summary was made from) against real test images (non-members).
- :func:`nearest_neighbour_audit`: L2 distance from each synthetic image to its nearest real training image,
  against the baseline of real *test* images to their nearest training image (what an unrelated fresh sample
  looks like); the closest pairs are saved side by side as a PNG for a person to look at.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

FPRS = (0.001, 0.01, 0.1)


@dataclass
class MIAResult:
    """Attack scores: ROC AUC (0.5 = chance) and TPR at fixed low FPRs, per attack."""

    auc: float  # of the loss attack
    tpr_at_fpr: dict[str, float]
    confidence_auc: float
    members: int
    nonmembers: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The result as a plain dict (JSON-ready)."""
        return asdict(self)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_target: float) -> float:
    """The highest true positive rate the attack reaches with false positive rate at most ``fpr_target``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample membership scores (higher = more likely a member): ``-loss`` and the true-class confidence."""
    from ..train import predict

    logits = predict(model, x, batch_size).cpu()
    y = y.cpu()
    loss = F.cross_entropy(logits, y, reduction="none")
    conf = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return (-loss).numpy(), conf.numpy()


def membership_inference(model: nn.Module, members: tuple[torch.Tensor, torch.Tensor],
                         nonmembers: tuple[torch.Tensor, torch.Tensor]) -> MIAResult:
    """Loss- and confidence-threshold attacks on ``model``: AUC and TPR at FPR 0.1%, 1%, 10%."""
    from sklearn.metrics import roc_auc_score

    if len(members[0]) == 0 or len(nonmembers[0]) == 0:
        raise DataError("A membership-inference audit needs at least one member and one non-member sample.")
    lm, cm = attack_scores(model, *members)
    ln, cn = attack_scores(model, *nonmembers)
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    loss_s, conf_s = np.r_[lm, ln], np.r_[cm, cn]
    return MIAResult(auc=float(roc_auc_score(labels, loss_s)),
                     tpr_at_fpr={str(f): tpr_at_fpr(labels, loss_s, f) for f in FPRS},
                     confidence_auc=float(roc_auc_score(labels, conf_s)), members=len(lm), nonmembers=len(ln))


def audit_summary(summary, real, *, model: str = "convnet", epochs: int = 300, n: int = 1000, seed: int = 0,
                  device: str = "auto", lr: float | None = None, progress: bool = False) -> MIAResult:
    """Train ``model`` on the summary as a user of it would (:func:`~distill_apps.fit_summary.train_on_summary`;
    ``lr=None``: the summary's learned lr, else 0.01), then attack it with ``n`` real training images (members
    of the private data) against ``n`` real test images (non-members)."""
    from ..fit_summary import fresh_model, train_on_summary
    from ..runtime import generator, pick_device

    dev = pick_device(device)
    g = generator("mia", seed)
    net = fresh_model(model, real, g, dev)
    train_on_summary(summary, net, epochs=epochs, lr=lr, generator=g, progress=progress)
    k = min(n, len(real.x_train), len(real.x_test))
    im = torch.randperm(len(real.x_train), generator=g)[:k]
    it = torch.randperm(len(real.x_test), generator=g)[:k]
    res = membership_inference(net, (real.x_train[im.to(real.x_train.device)], real.y_train[im.to(real.y_train.device)]),
                               (real.x_test[it.to(real.x_test.device)], real.y_test[it.to(real.y_test.device)]))
    res.extra.update({"model": model, "epochs": epochs, "trained_on": "summary"})
    return res


# ---------------------------------------------------------------------- nearest neighbours
def nearest(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024, exclude_self: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of ``a`` the L2 distance to, and index of, its nearest row of ``b`` (flattened images).

    ``exclude_self=True`` (``a`` is ``b``) ignores each row's match with itself.
    """
    a2, b2 = a.flatten(1).float(), b.flatten(1).float()
    bn = (b2 ** 2).sum(1)
    dists, idxs = [], []
    for i in range(0, len(a2), chunk):
        q = a2[i:i + chunk]
        d = ((q ** 2).sum(1, keepdim=True) + bn[None] - 2 * q @ b2.T).clamp(min=0)
        if exclude_self:
            r = torch.arange(i, i + len(q), device=d.device)
            d[torch.arange(len(q)), r] = float("inf")
        ix = d.argmin(1)
        dists.append((q - b2[ix]).norm(dim=1))  # exact distance to the match (the expansion loses precision)
        idxs.append(ix)
    return torch.cat(dists), torch.cat(idxs)


def side_by_side_png(left: torch.Tensor, right: torch.Tensor, path: str | Path, mean=(), std=(), *,
                     left_titles: list[str] | None = None, right_titles: list[str] | None = None,
                     title: str | None = None) -> Path:
    """A PNG of image pairs: each row holds ``left[i]`` next to ``right[i]`` (de-normalised, clamped), up-scaled
    and titled (default titles: "synthetic #i" / "nearest real"; pass class and distance to label them)."""
    from ..figures import pairs_png

    def denorm(x):
        """Undo the normalisation and clamp to [0, 1] for display."""
        x = x.detach().float().cpu()
        if mean and std:
            x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        return x.clamp(0, 1)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(left)
    return pairs_png(denorm(left), denorm(right), path,
                     left_titles=left_titles or [f"synthetic #{i}" for i in range(n)],
                     right_titles=right_titles or ["nearest real"] * n, suptitle=title)


def nearest_neighbour_audit(summary, real, *, png: str | Path | None = None, pairs: int = 10,
                            baseline_n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Distances from each synthetic image to the nearest real training image vs the test-to-train baseline.

    ``closer_than_baseline_min`` counts synthetic images nearer to a training image than *any* sampled real test
    image is: those are the ones to look at in the PNG (left synthetic, right its nearest real training image).
    """
    m = summary.materialize()
    xs = m.x.to(real.x_train.device).float()
    if tuple(xs.shape[1:]) != tuple(real.x_train.shape[1:]):
        raise DataError(f"Summary images are {tuple(xs.shape[1:])} but {real.name} images are "
                        f"{tuple(real.x_train.shape[1:])}: audit against the dataset the summary came from.")
    d_syn, i_syn = nearest(xs, real.x_train)
    g = torch.Generator().manual_seed(seed)
    it = torch.randperm(len(real.x_test), generator=g)[:baseline_n].to(real.x_test.device)
    d_base, _ = nearest(real.x_test[it], real.x_train)
    base_min = float(d_base.min())
    out = {"syn_to_train_min": float(d_syn.min()), "syn_to_train_mean": float(d_syn.mean()),
           "syn_to_train_median": float(d_syn.median()), "test_to_train_min": base_min,
           "test_to_train_mean": float(d_base.mean()), "test_to_train_median": float(d_base.median()),
           "test_to_train_p01": float(torch.quantile(d_base, 0.01)),
           "closer_than_baseline_min": int((d_syn < base_min).sum()), "synthetic": len(d_syn),
           "ratio_median": float(d_syn.median() / d_base.median().clamp(min=1e-12))}
    if png is not None:
        order = torch.argsort(d_syn)[:pairs]
        names = getattr(real, "class_names", None) or [str(c) for c in range(real.num_classes)]
        ys, yr = m.y.cpu(), real.y_train.cpu()
        side_by_side_png(xs[order], real.x_train[i_syn[order]], png, summary.mean, summary.std,
                         left_titles=[f"synthetic, class {names[int(ys[i])]}" for i in order.tolist()],
                         right_titles=[f"real #{int(i_syn[i])}, class {names[int(yr[i_syn[i]])]}\nL2 "
                                       f"{float(d_syn[i]):.2f}" for i in order.tolist()],
                         title=f"closest pairs; test-to-train min L2 {base_min:.2f}")
        out["png"] = str(png)
        out["closest_pairs"] = [{"synthetic": int(i), "real_train": int(i_syn[i]), "l2": float(d_syn[i])}
                                for i in order.tolist()]
    return out
