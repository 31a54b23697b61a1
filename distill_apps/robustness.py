"""Adversarial robustness of models trained on a summary: FGSM (Goodfellow et al., ICLR 2015) and PGD (Madry et
al., ICLR 2018) under an L-infinity budget ``eps`` in pixel units ([0, 1] images), converted through the
dataset's normalisation (the perturbation is made on de-normalised pixels, clipped to [0, 1], and the result is
normalised again before the model sees it).

PGD: ``steps`` (default 10) signed-gradient steps of ``step_size`` (default ``eps / 4``) from a uniform random
start in the eps-ball, projected back onto the ball and [0, 1] after each step. FGSM: one step of size ``eps``
from the clean image. Both maximise the cross-entropy of the true class; models are attacked in eval mode.

``robust_evaluate(summary, attack="pgd", eps=[0.1, 0.2])`` trains students with any protocol that exposes its
trained models (``train``, ``softlabel``), attacks each on ``n`` test images and reports robust accuracy per eps
in ``EvalResult.extra["robust"]``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .registry import Registry

Attack = Callable[..., torch.Tensor]
ATTACKS: Registry[Attack] = Registry("attack")
register_attack = ATTACKS.register


def check_eps(eps) -> list[float]:
    """Epsilons as a list of floats in [0, 1] (pixel units); anything else is a ConfigError."""
    vals = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not vals:
        raise ConfigError("Give at least one attack epsilon (--eps E [E ...]).")
    for e in vals:
        if not isinstance(e, (int, float)) or not (0.0 <= float(e) <= 1.0) or e != e:
            raise ConfigError(
                f"Attack epsilon {e!r} is out of range: eps is an L-infinity budget in pixel units, within [0, 1] "
                "(images scaled to [0, 1]; e.g. 0.1 or 0.3 for MNIST, 8/255 = 0.031 for CIFAR-10). The "
                "conversion through the dataset's normalisation is done for you.")
    return [float(e) for e in vals]


def _norm(mean, std, device):
    """Mean and std as ``(1, C, 1, 1)`` tensors on ``device``."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return m, s


def _loss_grad(model: nn.Module, p: torch.Tensor, y: torch.Tensor, m, s) -> torch.Tensor:
    """Gradient of the cross-entropy loss with respect to the pixel-space input ``p``."""
    p = p.detach().requires_grad_(True)
    loss = F.cross_entropy(model((p - m) / s).float(), y)
    (g,) = torch.autograd.grad(loss, p)
    return g


@register_attack("fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, mean, std, **_) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` in pixel space; returns normalised adversarial images."""
    m, s = _norm(mean, std, x.device)
    p = x * s + m
    adv = (p + eps * _loss_grad(model, p, y, m, s).sign()).clamp(0, 1)
    return ((adv - m) / s).detach()


@register_attack("pgd")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, mean, std, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, generator: torch.Generator | None = None,
        **_) -> torch.Tensor:
    """L-infinity PGD: ``steps`` steps of ``step_size`` (default ``eps / 4``) from a random start in the ball."""
    m, s = _norm(mean, std, x.device)
    p0 = x * s + m
    a = eps / 4 if step_size is None else step_size
    adv = p0.clone()
    if random_start and eps > 0:
        u = torch.rand(p0.shape, generator=generator).to(p0) * 2 - 1
        adv = (p0 + eps * u).clamp(0, 1)
    for _ in range(steps):
        adv = adv + a * _loss_grad(model, adv, y, m, s).sign()
        adv = torch.min(torch.max(adv, p0 - eps), p0 + eps).clamp(0, 1)
    return ((adv - m) / s).detach()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str, eps: float, mean, std,
                    batch_size: int = 500, seed: int = 0, **attack_kw) -> float:
    """Accuracy of ``model`` on ``attack``-perturbed ``x`` (normalised images) at pixel budget ``eps``."""
    (eps,) = check_eps(eps)
    fn = ATTACKS.get(attack)
    model.eval()
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        adv = fn(model, xb, yb, eps, mean=mean, std=std, generator=g, **attack_kw) if eps > 0 else xb
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / max(1, len(x))


def robust_evaluate(summary, dataset=None, *, attack: str | tuple[str, ...] | list[str] = "pgd", eps=(0.1,),
                    protocol: str | None = None, n: int | None = 1000, steps: int = 10, step_size: float | None = None,
                    seed: int = 0, **evaluate_kw):
    """:func:`~distill_apps.evaluate.evaluate` plus the robust accuracy of every trained student under
    ``attack`` at each ``eps`` (pixel units), on the first ``n`` test images (all when None).

    ``extra["robust"]`` holds the attack's figures; with several attacks (a list), ``extra["robust"]`` maps each
    attack's name to its figures, the students being trained once and attacked by each."""
    from .data import data_for_summary
    from .evaluate import PROTOCOLS, evaluate

    protocol = protocol or summary.meta.get("eval_protocol") or "train"  # sre2l/rded: softlabel
    eps_list = check_eps(eps)
    attacks = [attack] if isinstance(attack, str) else list(attack)
    for name in attacks:
        ATTACKS.get(name)
    if "on_student" not in inspect.signature(PROTOCOLS.get(protocol)).parameters:
        raise ConfigError(f"Protocol {protocol!r} does not hand out the models it trains, so they cannot be "
                          "attacked: use --protocol train or softlabel with --attack.")
    if steps < 1:
        raise ConfigError(f"PGD needs steps >= 1; got {steps}.")
    real = data_for_summary(summary, dataset, evaluate_kw.get("data_root"))
    x_t, y_t = real.images(slice(0, n), "test"), real.y_test[:n]  # only the attacked images, not the whole split
    per_run: dict[str, list[dict[str, float]]] = {name: [] for name in attacks}

    def attack_student(net: nn.Module, run: int) -> None:
        """Record the robust accuracy of one trained student under every attack and epsilon."""
        for name in attacks:
            kw = {"steps": steps, "step_size": step_size} if name == "pgd" else {}
            per_run[name].append({str(e): robust_accuracy(net, x_t, y_t, attack=name, eps=e, mean=real.mean,
                                                          std=real.std, seed=seed + run, **kw) for e in eps_list})

    res = evaluate(summary, real, protocol=protocol, seed=seed, on_student=attack_student, **evaluate_kw)
    infos: dict[str, dict[str, Any]] = {}
    for name, runs in per_run.items():
        acc = {e: float(np.mean([r[e] for r in runs])) for e in runs[0]} if runs else {}
        std = {e: float(np.std([r[e] for r in runs])) for e in runs[0]} if runs else {}
        info: dict[str, Any] = {"attack": name, "eps": eps_list, "accuracy": acc, "accuracy_std": std,
                                "per_run": runs, "n_test": len(x_t), "norm": "linf, pixel units [0, 1]"}
        if name == "pgd":
            info.update(steps=steps, step_size=step_size if step_size is not None else "eps/4", random_start=True)
        infos[name] = info
    res.extra["robust"] = infos[attacks[0]] if isinstance(attack, str) else infos
    return res
