"""Kernels for the meta-model-matching family (KIP, RFAD, FRePO) and kernel ridge regression.

* :func:`fc_relu_kernels` -- the exact infinite-width NNGP and NTK of a fully-connected ReLU network in the NTK
  parameterisation (Jacot et al. 2018; Lee et al. 2019; Arora et al. 2019), by the arc-cosine recursions of
  Cho & Saul (2009). :class:`NTKParamMLP` is the matching finite network, so the analytic kernel can be checked
  against the empirical one as the width grows.
* :func:`empirical_ntk` -- the finite-width NTK ``J(x1) J(x2)^T`` of any network through ``torch.func``
  (``vmap(jacrev)``), differentiable w.r.t. the inputs. **KIP on ConvNet uses this kernel** on a freshly
  initialised *single-output* ConvNet (no normalisation), resampled every outer step. Why not the analytic
  infinite-width ConvNet NTK that KIP's paper uses: with pooling it needs every pixel pair of every image pair,
  O(n^2 (HW)^2 depth) memory and time, which is out of reach on a CPU and needs Neural Tangents (JAX); the
  empirical NTK has the analytic one as its mean over initialisations, keeps the same architecture as the
  train-from-scratch evaluation, and costs n backward passes. A single-output network is used because the
  infinite-width NTK of a K-output net is ``Theta (x) I_K``, so one output is the per-class kernel, at 1/K of
  the Jacobian cost.
* :func:`random_features` -- RFAD's random-feature NNGP (Loo et al. 2022): the penultimate features of M
  randomly initialised finite ConvNets, concatenated and scaled so ``phi(x1) phi(x2)^T`` estimates the NNGP.
  The cost is linear in the number of images.
* :func:`krr_predict` / :func:`krr_predict_features` -- kernel ridge regression in closed form (Cholesky with
  growing jitter), in the dual (n x n) or, for features, the primal (D x D) form, which is linear in n.
* the ``"krr"`` evaluation protocol (``evaluate(summary, protocol="krr", kernel=...)``).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .errors import ConfigError, DataError, NonFiniteError
from .evaluate import EvalResult, register_protocol
from .registry import Registry

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------- analytic FC ReLU kernels
def _relu_expectations(cov: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc-cosine kernels of order 1 and 0: ``E[relu(u) relu(v)]`` and ``E[relu'(u) relu'(v)]``.

    ``(u, v)`` is centred Gaussian with variances ``d1[:, None]``, ``d2[None, :]`` and covariance ``cov``.
    """
    norm = torch.sqrt(d1[:, None] * d2[None, :]).clamp_min(1e-30)
    cos = (cov / norm).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    k1 = norm / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * cos)
    k0 = (math.pi - theta) / (2 * math.pi)
    return k1, k0


def fc_relu_kernels(x1: torch.Tensor, x2: torch.Tensor, depth: int = 3, sigma_w: float = math.sqrt(2.0),
                    sigma_b: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(nngp, ntk)`` of a ReLU MLP with ``depth`` hidden layers, NTK parameterisation, scalar output.

    Pre-activations ``h^{l+1} = sigma_w / sqrt(n_l) W^{l+1} a^l + sigma_b b^{l+1}`` with standard normal ``W, b``
    (the network :class:`NTKParamMLP` builds). Recursions (Jacot et al. 2018; Arora et al. 2019)::

        Sigma^0 = sigma_w^2 <x, x'> / d + sigma_b^2,            Theta^0 = Sigma^0
        Sigma^l = sigma_w^2 k1(Sigma^{l-1}) + sigma_b^2,         Theta^l = Sigma^l + sigma_w^2 k0(Sigma^{l-1}) Theta^{l-1}

    Images are flattened. Returns two ``(n1, n2)`` tensors (``Sigma^depth`` and ``Theta^depth``).
    """
    if depth < 0:
        raise ConfigError(f"depth must be >= 0; got {depth}.")
    a, b = x1.flatten(1), x2.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise DataError(f"kernel inputs differ in size: {tuple(x1.shape)} vs {tuple(x2.shape)}.")
    d = a.shape[1]
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    cov = sw2 * (a @ b.T) / d + sb2
    d1 = sw2 * (a * a).sum(1) / d + sb2
    d2 = sw2 * (b * b).sum(1) / d + sb2
    ntk = cov
    for _ in range(depth):
        k1, k0 = _relu_expectations(cov, d1, d2)
        ntk = sw2 * k1 + sb2 + sw2 * k0 * ntk
        cov = sw2 * k1 + sb2
        d1, d2 = sw2 * d1 / 2 + sb2, sw2 * d2 / 2 + sb2  # k1 on the diagonal is Sigma / 2
    return cov, ntk


class NTKParamMLP(nn.Module):
    """The finite ReLU MLP whose infinite-width kernels :func:`fc_relu_kernels` computes (scalar output)."""

    def __init__(self, in_dim: int, width: int, depth: int = 3, sigma_w: float = math.sqrt(2.0),
                 sigma_b: float = 0.1, out_dim: int = 1, generator: torch.Generator | None = None) -> None:
        """An MLP in NTK parameterisation (weights N(0, 1), scaled by ``sigma_w / sqrt(fan_in)``), whose wide limit the
        closed-form kernels describe."""
        super().__init__()
        dims = [in_dim] + [width] * depth + [out_dim]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(o, i, generator=generator)) for i, o in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(o, generator=generator)) for o in dims[1:]])
        self.sigma_w, self.sigma_b = sigma_w, sigma_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the MLP on flattened inputs."""
        h = x.flatten(1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = self.sigma_w / math.sqrt(w.shape[1]) * h @ w.T + self.sigma_b * b
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h


# ---------------------------------------------------------------------- empirical NTK (torch.func)
def _jacobian(net: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(n, P)`` Jacobian of the scalar output of ``net`` w.r.t. ``params``, differentiable w.r.t. ``x``."""
    buffers = dict(net.named_buffers())

    def f(p, xi):
        """The network's first output for one input, as a function of the parameters."""
        return functional_call(net, {**p, **buffers}, (xi.unsqueeze(0),)).reshape(-1)[0]

    jac = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk)(params, x)
    return torch.cat([j.reshape(x.shape[0], -1) for j in jac.values()], 1)


def empirical_ntk(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """Empirical NTK ``J(x1) J(x2)^T`` of a single-output ``net`` at its current weights (weights detached).

    Gradients flow to ``x1``/``x2`` when they require grad (KIP differentiates through it).
    """
    params = {k: v.detach() for k, v in net.named_parameters()}
    j1 = _jacobian(net, params, x1, chunk)
    j2 = j1 if x2 is None else _jacobian(net, params, x2, chunk)
    return j1 @ j2.T


# ---------------------------------------------------------------------- random features (RFAD)
@contextlib.contextmanager
def frozen(*nets: nn.Module) -> Iterator[None]:
    """Treat the nets' weights as constants (no graph to them) inside the block; restores the flags after."""
    saved = [(p, p.requires_grad) for net in nets for p in net.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def embed(net: nn.Module, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Penultimate features ``net.embed(x)`` flattened, in chunks (gradients flow to ``x`` when it requires grad)."""
    if not hasattr(net, "embed"):
        raise ConfigError(f"{type(net).__name__} has no embed(); pick a model with a feature extractor (convnet).")
    return torch.cat([net.embed(c).flatten(1).float() for c in x.split(chunk)])


def random_features(nets: list[nn.Module], x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """RFAD's features: ``concat_m embed_m(x) / sqrt(M d_m)`` over randomly initialised nets (weights constant).

    ``phi(x1) @ phi(x2).T`` is an unbiased estimate of the NNGP kernel of the embedding layer (over the random
    initialisation); the cost is linear in the number of images.
    """
    with frozen(*nets):
        outs = [embed(net, x, chunk) for net in nets]
    return torch.cat([o / math.sqrt(o.shape[1] * len(nets)) for o in outs], 1)


# ---------------------------------------------------------------------- kernel ridge regression
def _chol(a: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor of a symmetric PSD matrix, adding growing jitter until it succeeds."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    scale = float(a.diagonal().abs().mean().detach()) or 1.0
    jitter = 0.0
    for attempt in range(8):
        low, info = torch.linalg.cholesky_ex(a + jitter * eye if jitter else a)
        if int(info) == 0:
            return low
        jitter = scale * 10.0 ** (attempt - 9)  # 1e-9 .. 1e-2 relative to the mean diagonal
    raise NonFiniteError(f"The {what} matrix is not positive definite even with jitter 1e-2 x its mean diagonal "
                         "(NaN/Inf in the images?): raise the regulariser (reg) or lower the image learning rate.")


def krr_solve(k_ss: torch.Tensor, y_s: torch.Tensor, reg: float = 1e-6) -> torch.Tensor:
    """Dual weights ``alpha = (K_ss + reg * tr(K_ss)/n * I)^{-1} Y_s`` (KIP's trace-scaled regulariser)."""
    n = k_ss.shape[0]
    lam = reg * k_ss.diagonal().sum() / n
    a = k_ss + lam * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    return torch.cholesky_solve(y_s.to(k_ss.dtype), _chol(a, "kernel"))


def krr_predict(k_ts: torch.Tensor, k_ss: torch.Tensor, y_s: torch.Tensor, reg: float = 1e-6) -> torch.Tensor:
    """Kernel ridge regression predictions ``K_ts (K_ss + lambda I)^{-1} Y_s`` (dual form, O(n_s^3))."""
    return k_ts @ krr_solve(k_ss, y_s, reg)


def krr_predict_features(phi_t: torch.Tensor, phi_s: torch.Tensor, y_s: torch.Tensor, reg: float = 1e-6,
                         form: str = "auto") -> torch.Tensor:
    """KRR with the linear kernel on features ``phi``; identical to :func:`krr_predict` on ``phi phi^T``.

    ``form="primal"`` solves the ``D x D`` system ``(phi_s^T phi_s + lambda I) W = phi_s^T Y_s`` (cost linear in
    the support size n_s, RFAD's point); ``"dual"`` the ``n_s x n_s`` one; ``"auto"`` the smaller.
    """
    n, dim = phi_s.shape
    if form == "auto":
        form = "primal" if n > dim else "dual"
    if form == "dual":
        return krr_predict(phi_t @ phi_s.T, phi_s @ phi_s.T, y_s, reg)
    if form != "primal":
        raise ConfigError(f"Unknown KRR form {form!r}: use auto, primal or dual.")
    lam = reg * phi_s.square().sum() / n  # the same trace-scaled lambda as the dual form
    a = phi_s.T @ phi_s + lam * torch.eye(dim, dtype=phi_s.dtype, device=phi_s.device)
    w = torch.cholesky_solve(phi_s.T @ y_s.to(phi_s.dtype), _chol(a, "feature covariance"))
    return phi_t @ w


def regression_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Centred one-hot targets ``onehot - 1/K`` (KIP/RFAD/FRePO's regression labels)."""
    return F.one_hot(y, num_classes).float() - 1.0 / num_classes


# ---------------------------------------------------------------------- named kernels
@dataclass
class KernelSpec:
    """A kernel drawn for one use: ``fn(x1, x2) -> (n1, n2)``; ``features(x)`` when it is a feature kernel."""

    name: str
    fn: Kernel
    features: Callable[[torch.Tensor], torch.Tensor] | None = None


KERNELS: Registry[Callable[..., KernelSpec]] = Registry("kernel")
register_kernel = KERNELS.register


def make_kernel(name: str, *, image_shape: tuple[int, ...], g: torch.Generator, device: torch.device | str = "cpu",
                model: str | None = None, **opts) -> KernelSpec:
    """Draw kernel ``name`` (``fc_ntk``, ``fc_nngp``, ``conv_entk``, ``rf_nngp``) for images of ``image_shape``."""
    return KERNELS.get(name)(image_shape=tuple(image_shape), g=g, device=torch.device(device), model=model, **opts)


@register_kernel("fc_ntk")
def _fc_ntk(*, depth: int = 3, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.1, **_) -> KernelSpec:
    """Closed-form NTK of a fully connected ReLU network (Jacot et al., NeurIPS 2018), the kernel KIP uses."""
    return KernelSpec("fc_ntk", lambda a, b: fc_relu_kernels(a, b, depth, sigma_w, sigma_b)[1])


@register_kernel("fc_nngp")
def _fc_nngp(*, depth: int = 3, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.1, **_) -> KernelSpec:
    """Closed-form NNGP kernel of a fully connected ReLU network (Lee et al., ICLR 2018)."""
    return KernelSpec("fc_nngp", lambda a, b: fc_relu_kernels(a, b, depth, sigma_w, sigma_b)[0])


def _net(model: str | None, image_shape, outputs: int, g, device) -> nn.Module:
    """A freshly initialised network (default ConvNet without norm) for empirical kernels."""
    from .nets import build_model

    return build_model(model or "convnet-nn", image_shape[0], outputs, image_shape[1:], generator=g, device=device)


@register_kernel("conv_entk")
def _conv_entk(*, image_shape, g, device, model=None, **_) -> KernelSpec:
    """Empirical NTK of a ConvNet: inner products of per-image parameter Jacobians."""
    net = _net(model, image_shape, 1, g, device)
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = lambda x: _jacobian(net, params, x, 64)  # noqa: E731  (the eNTK's features are the Jacobian rows)
    return KernelSpec("conv_entk", lambda a, b: jac(a) @ jac(b).T, features=jac)


@register_kernel("rf_nngp")
def _rf_nngp(*, image_shape, g, device, model=None, n_models: int = 8, **_) -> KernelSpec:
    """RFAD's random-feature NNGP (Loo et al., NeurIPS 2022): outputs of ``n_models`` random ConvNets as features."""
    nets = [_net(model, image_shape, 1, g, device) for _ in range(n_models)]
    feats = lambda x: random_features(nets, x)  # noqa: E731
    return KernelSpec("rf_nngp", lambda a, b: feats(a) @ feats(b).T, features=feats)


# ---------------------------------------------------------------------- the "krr" evaluation protocol
def _summary_targets(m) -> torch.Tensor:
    """Kernel-regression targets of a summary: its regression targets, centred soft probabilities, or centred one-hot
    labels."""
    if m.label_kind == "regression" and m.soft is not None:
        return m.soft.float()
    if m.label_kind == "logits" and m.soft is not None:
        return torch.softmax(m.soft.float(), 1) - 1.0 / m.num_classes
    return regression_targets(m.y, m.num_classes)


@register_protocol("krr")
def krr_protocol(summary, real, *, model: str, runs: int, epochs: int | None = None, lr: float | None = None,
                 batch_size: int = 256, augment: str | None = None, seed: int, device: torch.device,
                 progress: bool = False, amp: bool = True, kernel: str | None = None, reg: float | None = None,
                 chunk: int = 500, **kernel_opts) -> EvalResult:
    """Kernel ridge regression on the summary, tested on the real test split (KIP/RFAD/FRePO's own protocol).

    ``kernel`` defaults to the one the summary was distilled with (``meta["kernel"]``), else ``rf_nngp``; its
    network is ``model`` unless the caller left the default ``"convnet"`` and the summary names
    ``meta["kernel_model"]``. Random kernels are redrawn for each of ``runs`` (mean +- std). ``epochs``, ``lr``,
    ``batch_size`` and ``augment`` belong to the train protocol and are ignored.
    """
    from .runtime import generator

    t0 = time.perf_counter()
    meta = summary.meta
    kname = kernel or meta.get("kernel") or "rf_nngp"
    kmodel = meta.get("kernel_model") if model == "convnet" and meta.get("kernel_model") else model
    reg = float(reg if reg is not None else meta.get("kernel_reg", 1e-6))
    m = summary.materialize()
    xs, ys = m.x.to(device).float(), _summary_targets(m).to(device)
    x_test, y_test = real.view("test"), real.y_test  # normalised chunk by chunk
    accs: list[float] = []
    it = range(runs if kname not in ("fc_ntk", "fc_nngp") else 1)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"krr {kname}", leave=False)
    for r in it:
        spec = make_kernel(kname, image_shape=real.image_shape, g=generator("evaluate-krr", seed, r), device=device,
                           model=kmodel, **kernel_opts)
        correct = 0
        with torch.no_grad():  # torch.func's jacrev ignores an outer no_grad, so the eNTK still works here
            if spec.features is not None:
                phi_s = spec.features(xs)
            else:
                alpha = krr_solve(spec.fn(xs, xs), ys, reg)
            if spec.features is not None:  # keep a chunk of test features near 50M floats (eNTK rows are long)
                chunk = max(1, min(chunk, int(5e7 // max(1, phi_s.shape[1]))))
            for i in range(0, x_test.shape[0], chunk):
                xt = x_test[i:i + chunk].to(device)
                if spec.features is not None:
                    pred = krr_predict_features(spec.features(xt), phi_s, ys, reg)
                else:
                    pred = spec.fn(xt, xs) @ alpha
                correct += int((pred.argmax(1).cpu() == y_test[i:i + chunk].cpu()).sum())
        accs.append(correct / x_test.shape[0])
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, len(accs), kmodel or "", real.name, "krr",
                      None, None, None, time.perf_counter() - t0,
                      extra={"kernel": kname, "kernel_model": kmodel, "reg": reg,
                             "targets": m.label_kind if m.soft is not None else "onehot-centred"})
