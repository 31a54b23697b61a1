"""The DP-SGD baseline through Opacus' ``PrivacyEngine`` (Abadi et al., CCS 2016), for "share a DP summary" vs
"train privately" comparisons at the same ``(epsilon, delta)``.

:func:`dp_sgd_baseline` trains a classifier on the real training data with ``make_private_with_epsilon``
(Poisson sampling, per-sample clipping, Gaussian noise calibrated by Opacus for the target over the planned
epochs), then reports test accuracy and the epsilon Opacus' accountant spent. BatchNorm is replaced through
``ModuleValidator.fix`` (GroupNorm); the default ConvNet uses instance norm and needs no fix. The private
distillation methods themselves are ``dp-dm`` and ``dp-dc`` (:mod:`distill_apps.methods.private`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import distill_apps as da
from distill_apps.privacy import check_accountant, check_target
from distill_apps.quiet import quieted
from distill_apps.runtime import generator, pick_device

__all__ = ["DPSGDResult", "dp_sgd_baseline"]


def _opacus():
    """The opacus package, or an ImportError naming the extra to install."""
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("The DP-SGD baseline needs Opacus: pip install 'distill-apps[privacy]'") from exc
    return opacus


@dataclass
class DPSGDResult:
    """What the DP-SGD baseline reached: test accuracy, the epsilon Opacus' accountant spent and the settings."""

    accuracy: float
    epsilon: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    steps: int
    epochs: int
    batch_size: int
    accountant: str
    model: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict."""
        return asdict(self)


@quieted()  # Opacus' secure-RNG and alpha-range notices, torch's backward-hook note (distill_apps.quiet)
def dp_sgd_baseline(real, *, epsilon: float, delta: float = 1e-5, epochs: int = 5, batch_size: int = 256,
                    lr: float = 0.1, momentum: float = 0.9, max_grad_norm: float = 1.0, model: str = "convnet",
                    accountant: str = "rdp", seed: int = 0, device: str = "auto", return_model: bool = False,
                    progress: bool = False):
    """Train ``model`` on ``real``'s training split with DP-SGD at ``(epsilon, delta)``; returns a
    :class:`DPSGDResult` (and the trained model when ``return_model``)."""
    opacus = _opacus()
    from opacus.validators import ModuleValidator
    from torch.utils.data import DataLoader, TensorDataset

    check_target(epsilon, delta)
    check_accountant(accountant)
    dev = pick_device(device)
    g = generator("dp-sgd", seed)
    net = da.build_model(model, real.image_shape[0], real.num_classes, real.image_shape[1:], generator=g)
    if ModuleValidator.validate(net, strict=False):
        net = ModuleValidator.fix(net)
    net = net.to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loader = DataLoader(TensorDataset(real.x_train.cpu(), real.y_train.cpu()), batch_size=batch_size,
                        generator=generator("dp-sgd-data", seed))
    engine = opacus.PrivacyEngine(accountant=accountant)
    noise_g = generator("dp-sgd-noise", seed) if dev.type == "cpu" else None
    net, opt, loader = engine.make_private_with_epsilon(
        module=net, optimizer=opt, data_loader=loader, target_epsilon=epsilon, target_delta=delta, epochs=epochs,
        max_grad_norm=max_grad_norm, noise_generator=noise_g)
    t0, steps = time.perf_counter(), 0
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"dp-sgd eps={epsilon}", leave=False)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in it:
        net.train()
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb.to(dev)), yb.to(dev)).backward()
            opt.step()
            steps += 1
    acc = da.score(net, real)
    res = DPSGDResult(accuracy=acc, epsilon=float(engine.get_epsilon(delta)), delta=delta, target_epsilon=epsilon,
                      noise_multiplier=float(opt.noise_multiplier), max_grad_norm=max_grad_norm, steps=steps,
                      epochs=epochs, batch_size=batch_size, accountant=accountant, model=model,
                      seconds=time.perf_counter() - t0)
    return (res, net) if return_model else res
