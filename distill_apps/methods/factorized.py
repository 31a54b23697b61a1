"""Factorised summaries: LinBa, HaBa and KFS. Each stores a small set of shared parts and decodes many images.

* ``linba`` (Deng & Russakovsky, NeurIPS 2022, "Remember the Past: Distilling Datasets into Addressable
  Memories for Neural Networks"): ``K`` shared bases ``M`` (K, D) and, for each of ``r`` recall slots, a linear
  addressing matrix ``A_j`` (C, K); image ``(j, c) = A_j[c] @ M`` with label ``c``. Trained by back-propagation
  through long unrolls of a *momentum* SGD inner loop (:func:`distill_apps.inner.momentum_unroll`) from a fresh
  network each step, with a learned inner step size; the outer loss is the cross-entropy on real data.
* ``haba`` (Liu et al., NeurIPS 2022, "Dataset Distillation via Factorization"): class-specific bases and ``n``
  small hallucinator networks shared by all classes (conv encoder, learned affine modulation, conv decoder, with a
  residual from the basis); every (hallucinator, basis) pair is one image. Trained with MTT's trajectory-matching
  objective (:mod:`distill_apps.experts`, :func:`distill_apps.methods.trajectory.mtt_loss`) plus the adversarial
  contrastive constraint: a feature extractor is trained to classify real data *and* to make the images that
  different hallucinators make from one basis look alike, while the bases and hallucinators minimise that
  similarity (so the hallucinators must produce differences a discriminative extractor can see).
* ``kfs`` (Lee et al., 2022, "Dataset Condensation with Latent Space Knowledge Factorization and Sharing"):
  low-resolution latent codes per class and ``n`` shared decoders (upsample, conv, ReLU, conv, plus a residual
  from the upsampled code); every (decoder, latent) pair is one image. Trained with DM's feature-distribution
  matching on the decoded images plus two regularisers in the spirit of the paper's: an inter-class
  contrastive term (a supervised contrastive loss on the decoded images' embeddings: same class together,
  other classes apart) and an intra-class diversity term (the mean cosine similarity between the decoded images
  of one class, so the shared decoders do not collapse onto one image).

**Storage.** A budget of "IPC k" is ``k * num_classes * prod(image_shape)`` stored floats, the size of ``k`` raw
images per class. :func:`plan_linba` and :func:`plan_hallucinated` size each factorisation so that *everything
stored* (bases, addressing matrices, latents, hallucinator/decoder weights) fits that budget as tightly as whole
units allow; :func:`check_storage` refuses any plan over it. The summary's ``storage_floats()`` equals the plan's
``total``. At tiny budgets (IPC 1 of 8x8 digits) full-resolution bases do not fit beside the shared networks, so
the plan stores bases at a lower resolution (``scale``) and the hallucinators upsample them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DEFAULT_STRATEGY, DSA
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..inner import functional, momentum_unroll, unroll_options
from ..matching import mean_embedding_distance
from ..parameterisation import draw_real
from ..summary import DECODERS, ChunkedDecoder, SyntheticSet, register_decoder
from ..train import target_loss
from .trajectory import MTT, MTTConfig, UnrollPlan, mtt_loss


# ====================================================================== storage accounting
def image_budget(num_classes: int, image_shape: tuple[int, ...], ipc: int) -> int:
    """Stored floats of ``ipc`` raw images per class: the unit every factorised budget is counted in."""
    return int(ipc) * int(num_classes) * math.prod(image_shape)


@dataclass(frozen=True)
class StoragePlan:
    """The shapes of every stored tensor of a factorisation, and the budget they must fit."""

    method: str
    budget: int
    shapes: dict[str, tuple[int, ...]]
    unit: int  # floats one more repeated unit (a basis, a latent per class) would add
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Stored floats of every tensor of the plan together."""
        return sum(math.prod(s) for s in self.shapes.values())


def check_storage(plan: StoragePlan) -> StoragePlan:
    """Refuse a plan whose stored floats exceed its budget (shared weights included)."""
    if plan.total > plan.budget:
        raise ConfigError(f"{plan.method}: the factorisation stores {plan.total} floats but the budget is "
                          f"{plan.budget} ({plan.settings}); lower the shared parts or raise the IPC.")
    return plan


def plan_linba(num_classes: int, image_shape: tuple[int, ...], ipc: int, recalls: int) -> StoragePlan:
    """``K`` bases (K, D) and ``recalls`` addressing matrices (C, K): ``K = budget // (D + recalls * C)``."""
    d, c = math.prod(image_shape), num_classes
    budget = image_budget(c, image_shape, ipc)
    if recalls < 1:
        raise ConfigError(f"linba: images_per_class must be >= 1; got {recalls}.")
    k = budget // (d + recalls * c)
    if k < 1:
        raise ConfigError(f"linba: IPC {ipc} ({budget} floats) cannot hold one basis ({d} floats) plus "
                          f"{recalls} addressing rows per class; lower images_per_class or raise the IPC.")
    plan = StoragePlan("linba", budget, {"bases": (k, *image_shape), "addressing": (recalls, c, k)},
                       unit=d + recalls * c, settings={"bases": k, "recalls": recalls})
    return check_storage(plan)


def hallucinator_shapes(n: int, hidden: int, code_ch: int, channels: int, affine: bool) -> dict[str, tuple[int, ...]]:
    """Weights of ``n`` conv-(affine)-ReLU-conv networks, stacked on a leading axis."""
    s = {"enc_w": (n, hidden, code_ch, 3, 3), "enc_b": (n, hidden), "dec_w": (n, channels, hidden, 3, 3),
         "dec_b": (n, channels)}
    if affine:
        s.update({"mod_scale": (n, hidden), "mod_shift": (n, hidden)})
    return s


def plan_hallucinated(method: str, num_classes: int, image_shape: tuple[int, ...], ipc: int, n: int, hidden: int,
                      code_ch: int, scales: tuple[int, ...], affine: bool, code: str) -> StoragePlan:
    """Codes per class (at the first resolution ``1/scale`` that leaves room for one per class) + ``n`` networks.

    Candidates are tried in order: the first scale at the given width, then at halved widths, then the next
    scale. The first that fits one code per class is used, with as many codes per class as the rest holds.
    """
    c, (ch, h, w) = num_classes, tuple(image_shape)
    budget = image_budget(c, image_shape, ipc)
    widths = []
    wd = hidden
    while wd >= 1:
        widths.append(wd)
        wd //= 2
    for s in scales:
        for wd in widths:
            hw = (math.ceil(h / s), math.ceil(w / s))
            shapes = hallucinator_shapes(n, wd, code_ch, ch, affine)
            shared = sum(math.prod(v) for v in shapes.values())
            per_code = code_ch * hw[0] * hw[1]
            per_class = (budget - shared) // (c * per_code)
            if per_class >= 1:
                plan = StoragePlan(method, budget, {code: (c * per_class, code_ch, *hw), **shapes},
                                   unit=c * per_code,
                                   settings={"per_class": per_class, "scale": s, "hidden": wd, "n": n,
                                             "code_channels": code_ch, "affine": affine})
                return check_storage(plan)
    raise ConfigError(f"{method}: IPC {ipc} ({budget} floats) cannot hold {n} shared networks plus one code per "
                      f"class at any scale in {scales}; use fewer networks or raise the IPC.")


# ====================================================================== decoders
def linba_images(bases: torch.Tensor, addressing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``A_j[c] @ M`` (recall-major) and their labels ``c``."""
    r, c, k = addressing.shape
    x = (addressing.reshape(r * c, k) @ bases.reshape(k, -1)).view(r * c, *bases.shape[1:])
    return x, torch.arange(c, device=bases.device).repeat(r)


def hallucinate(codes: torch.Tensor, p: dict[str, torch.Tensor], image_hw: tuple[int, int]) -> torch.Tensor:
    """Every network applied to every code: ``(n * N, C, H, W)``, network-major. All ``n`` run as grouped convs."""
    n, hidden, code_ch = p["enc_w"].shape[:3]
    channels = p["dec_w"].shape[1]
    u = codes if tuple(codes.shape[-2:]) == tuple(image_hw) else F.interpolate(
        codes, size=tuple(image_hw), mode="bilinear", align_corners=False)
    nb = u.shape[0]
    e = F.conv2d(u.repeat(1, n, 1, 1), p["enc_w"].reshape(n * hidden, code_ch, 3, 3), p["enc_b"].reshape(-1),
                 padding=1, groups=n)
    if "mod_scale" in p:
        e = e * p["mod_scale"].reshape(1, -1, 1, 1) + p["mod_shift"].reshape(1, -1, 1, 1)
    o = F.conv2d(F.relu(e), p["dec_w"].reshape(n * channels, hidden, 3, 3), p["dec_b"].reshape(-1), padding=1,
                 groups=n).view(nb, n, channels, *image_hw)
    if code_ch == channels:
        o = o + u.unsqueeze(1)
    return o.transpose(0, 1).reshape(n * nb, channels, *image_hw)


def hallucinated_images(params: dict[str, torch.Tensor], spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every network of ``params`` applied to every code, with the codes' class labels (network-major)."""
    codes = params[spec["code"]]
    img = tuple(spec["image_shape"])
    x = hallucinate(codes, params, img[1:])
    per_class, n = int(spec["per_class"]), int(params["enc_w"].shape[0])
    y = torch.arange(int(spec["num_classes"]), device=codes.device).repeat_interleave(per_class).repeat(n)
    return x, y


def _pick(out: torch.Tensor, groups: torch.Tensor, members: torch.Tensor, group: torch.Tensor,
          member: torch.Tensor) -> torch.Tensor:
    """Rows of ``out`` (group-major: ``len(groups) x len(members)``) for the pairs ``(group[i], member[i])``;
    ``groups``/``members`` are sorted unique values."""
    gi, mi = torch.searchsorted(groups, group), torch.searchsorted(members, member)
    return out[(gi * len(members) + mi).to(out.device)]


def _linba_labels(params: dict[str, torch.Tensor], spec: dict[str, Any]):
    r, c, _ = params["addressing"].shape
    return torch.arange(c).repeat(r).long(), None


def _linba_bind(params: dict[str, torch.Tensor], spec: dict[str, Any], device=None):
    """Decoded image ``i`` is row ``i`` of ``A @ M``: a chunk multiplies only its rows of ``A``."""
    dev = device if device is not None else params["bases"].device
    bases = params["bases"].float().to(dev)
    a = params["addressing"].float().to(dev)
    a = a.reshape(-1, a.shape[-1])
    m = bases.reshape(bases.shape[0], -1)
    return lambda idx: (a[idx.to(dev)] @ m).view(len(idx), *bases.shape[1:])


def _hallucinator_labels(params: dict[str, torch.Tensor], spec: dict[str, Any]):
    per_class, n = int(spec["per_class"]), int(params["enc_w"].shape[0])
    return torch.arange(int(spec["num_classes"])).repeat_interleave(per_class).repeat(n).long(), None


def _hallucinator_bind(params: dict[str, torch.Tensor], spec: dict[str, Any], device=None):
    """Decoded image ``i`` is network ``i // N`` on code ``i % N`` (``N`` codes): a chunk runs the networks and
    codes it touches (all of them, in the same grouped convolution, when the chunk is the whole summary)."""
    code = spec["code"]
    dev = device if device is not None else params[code].device
    p = {k: v.float().to(dev) for k, v in params.items()}
    codes, hw = p.pop(code), tuple(spec["image_shape"])[1:]
    nc = codes.shape[0]

    def images(idx: torch.Tensor) -> torch.Tensor:
        net, cid = idx // nc, idx % nc
        nets, cids = torch.unique(net), torch.unique(cid)
        sub = {k: v[nets.to(dev)] for k, v in p.items()}
        return _pick(hallucinate(codes[cids.to(dev)], sub, hw), nets, cids, net, cid)

    return images


register_decoder("linba")(ChunkedDecoder(_linba_labels, _linba_bind))
register_decoder("hallucinator")(ChunkedDecoder(_hallucinator_labels, _hallucinator_bind))
decode_linba, decode_hallucinator = DECODERS.get("linba"), DECODERS.get("hallucinator")


def _init_networks(shapes: dict[str, tuple[int, ...]], g: torch.Generator, device) -> dict[str, torch.Tensor]:
    """Encoders at He scale, decoders near zero (so every image starts as its code), identity modulation."""
    out = {}
    for k, s in shapes.items():
        if k == "enc_w":
            t = torch.randn(s, generator=g) * math.sqrt(2.0 / (s[2] * 9))
        elif k == "dec_w":
            t = torch.randn(s, generator=g) * (0.1 / math.sqrt(s[2] * 9))
        elif k == "mod_scale":
            t = torch.ones(s)
        else:
            t = torch.zeros(s)
        out[k] = t.to(device).requires_grad_(True)
    return out


def _codes_from_real(x: torch.Tensor, code_shape: tuple[int, ...]) -> torch.Tensor:
    """Real images resized to the code resolution (channels must match) as initial codes."""
    if x.shape[1] != code_shape[0]:
        raise ConfigError("code_channels other than the image channels need init='noise'.")
    return F.interpolate(x, size=tuple(code_shape[1:]), mode="area") if tuple(x.shape[-2:]) != tuple(code_shape[1:]) else x


class Factorised:
    """Factorised bases, the parameterisation the factorised methods compose: the stored tensors a
    :class:`StoragePlan` names, decoded by a registered decoder (``linba``, ``hallucinator``). ``export`` writes
    only those tensors with the decoder's name and spec, so the summary stores what the plan counts."""

    def __init__(self, plan: StoragePlan, decoder: str, real, **spec: Any) -> None:
        self.plan, self.decoder = plan, decoder
        self.num_classes, self.image_shape, self.extra = real.num_classes, tuple(real.image_shape), spec

    def stored(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stored tensors among a state's ``params`` (a learned step size is not one)."""
        return {k: params[k] for k in self.plan.shapes}

    def spec(self) -> dict[str, Any]:
        """The decoder spec: classes, image shape, the storage plan and the decoder's own fields."""
        return {"num_classes": self.num_classes, "image_shape": list(self.image_shape),
                "storage": {"budget": self.plan.budget, "total": self.plan.total, **self.plan.settings},
                **self.extra}

    def export(self, d: Distiller, state: DistillState, lr: float | None = None) -> SyntheticSet:
        """``d``'s summary of this factorisation: stored tensors, decoder, labels of the decoded images."""
        params, spec = self.stored(state.params), self.spec()
        y, _ = DECODERS.get(self.decoder).labels(params, spec)
        return d.synthetic(state, None, y, lr=lr, params=params, decoder=self.decoder, decoder_spec=spec,
                           meta={"storage_floats": self.plan.total, "storage_budget": self.plan.budget})


class Hallucinated(Factorised):
    """Codes (``code``: bases or latents) per class + ``n`` shared networks, every (network, code) pair decoded by
    :func:`hallucinate` into one image (HaBa, Liu et al., NeurIPS 2022; KFS, Lee et al., 2022)."""

    def __init__(self, plan: StoragePlan, real, code: str) -> None:
        super().__init__(plan, "hallucinator", real, code=code, per_class=plan.settings["per_class"])
        self.code = code

    def init_params(self, real, g: torch.Generator, device) -> dict[str, torch.Tensor]:
        """Codes from real images resized to the code resolution (noise when the channels differ), networks
        at :func:`_init_networks`' start; all learnable."""
        shapes = dict(self.plan.shapes)
        code_shape = shapes.pop(self.code)
        if self.plan.settings["code_channels"] == real.image_shape[0]:
            x, _, _ = draw_real(real, self.plan.settings["per_class"], g, device)
            codes = _codes_from_real(x, code_shape[1:])
        else:
            codes = torch.randn(code_shape, generator=g).to(device)
        return {self.code: codes.contiguous().requires_grad_(True), **_init_networks(shapes, g, device)}

    def images(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded images (network-major) and their labels, differentiable in every stored tensor."""
        return hallucinated_images(self.stored(params), self.spec())


# ====================================================================== LinBa
@dataclass
class LinBaConfig(MethodConfig):
    """Options of LinBa (Deng & Russakovsky, NeurIPS 2022): recall slots, unroll, step sizes, Adam rates."""
    steps: int = 5000
    quick_steps: int = 30
    amp: bool = False  # second-order gradients through the unroll stay in float32
    images_per_class: int = 0  # r recall slots (one image per class each); 0: 2 * ipc
    unroll_steps: int = 150  # inner momentum-SGD steps back-propagated through
    inner_momentum: float = 0.9
    lr_init: float = 0.01  # initial inner step size (learned)
    batch_syn: int = 0  # inner minibatch; 0: all decoded images
    batch_real: int = 256  # real images (balanced over classes) in the outer loss
    lr_bases: float = 0.01  # Adam
    lr_addressing: float = 0.01  # Adam
    lr_lr: float = 0.01  # Adam on log(step size)
    unroll_memory: str = "autograd"  # autograd | adjoint (the same gradient, activation memory flat in
    #   unroll_steps) | checkpoint (chunks of unroll_chunk steps recomputed); see inner.unroll
    unroll_chunk: int = 0
    unroll_micro_batch: int = 0  # recomputing modes: examples per micro-batch (0: whole minibatches; exact
    #   without batch statistics), so memory is flat in the inner batch size too


@register_method("linba")
class LinBa(Distiller):
    """LinBa (Deng & Russakovsky, NeurIPS 2022): shared bases with linear addressing, learned through unrolls."""
    family = "factorized"
    paper = ("Deng & Russakovsky, NeurIPS 2022, Remember the Past: Distilling Datasets into Addressable "
             "Memories for Neural Networks")
    Config = LinBaConfig

    def init(self, g: torch.Generator) -> DistillState:
        """Bases from real images, addressing by least squares onto them, a learnable inner step size."""
        r = self.real
        recalls = self.cfg.images_per_class or 2 * self.ipc
        plan = plan_linba(r.num_classes, r.image_shape, self.ipc, recalls)
        self.factors = Factorised(plan, "linba", r, recalls=recalls)
        k = plan.settings["bases"]
        per = math.ceil(k / r.num_classes)
        idx = r.sample_balanced(per, g).view(r.num_classes, per).t().flatten()[:k]  # spread over classes
        bases = r.images(idx, device=self.device)
        # addressing: least-squares projection of real images of each class onto the span of the bases
        target, _, _ = draw_real(r, recalls, g, self.device)
        target = target.view(r.num_classes, recalls, -1).transpose(0, 1)  # (r, C, D)
        addressing = target @ torch.linalg.pinv(bases.flatten(1))
        log_lr = torch.tensor(math.log(self.cfg.lr_init), device=self.device)
        params = {"bases": bases.requires_grad_(True), "addressing": addressing.contiguous().requires_grad_(True),
                  "log_lr": log_lr.requires_grad_(True)}
        opt = torch.optim.Adam([{"params": [params["bases"]], "lr": self.cfg.lr_bases},
                                {"params": [params["addressing"]], "lr": self.cfg.lr_addressing},
                                {"params": [params["log_lr"]], "lr": self.cfg.lr_lr}])
        return DistillState(params=params, optimizers={"syn": opt})

    def loss(self, state: DistillState, g: torch.Generator) -> torch.Tensor:
        """Real-data loss of a fresh network after ``unroll_steps`` momentum-SGD steps on the decoded images."""
        x, y = linba_images(state.params["bases"], state.params["addressing"])
        net = self.new_net(g)
        f, p0 = functional(net)
        lr = state.params["log_lr"].exp()
        bs = self.cfg.batch_syn or x.shape[0]
        with self.autocast():
            p = momentum_unroll(f, p0, x, y, self.cfg.unroll_steps, lr, self.cfg.inner_momentum, bs, g,
                                **unroll_options(self.cfg))
            xr, yr = self.real_batch(max(1, self.cfg.batch_real // self.real.num_classes), g)
            return target_loss(f(p, xr), yr)

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One unrolled training of a fresh network on the decoded images; real-data loss back to the factors."""
        loss = self.loss(state, g)
        self.update(state, loss)
        return {"loss": float(loss.detach()), "syn_lr": float(state.params["log_lr"].detach().exp())}

    def export(self, state: DistillState) -> SyntheticSet:
        """The bases and addressing matrices with the ``linba`` decoder and the learned step size."""
        return self.factors.export(self, state, lr=float(state.params["log_lr"].detach().exp()))


# ====================================================================== KFS
@dataclass
class KFSConfig(MethodConfig):
    """Options of KFS (Lee et al., 2022): decoders, latent resolution, Adam rates and the two regulariser weights."""
    steps: int = 20000
    quick_steps: int = 200
    decoders: int = 4
    decoder_channels: int = 16
    latent_channels: int = 0  # 0: the image channels (enables the residual from the upsampled code)
    latent_scale: int = 2  # latents at 1/scale resolution
    lr_latent: float = 0.01  # Adam
    lr_decoder: float = 0.001  # Adam
    batch_real: int = 256
    dsa_strategy: str = DEFAULT_STRATEGY
    lambda_contrast: float = 0.1  # inter-class supervised contrastive term on the decoded images' embeddings
    lambda_diversity: float = 0.1  # intra-class diversity: mean cosine similarity within a class
    temperature: float = 0.5  # of the contrastive term


def supervised_contrastive(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss: each embedding's same-class others are its positives."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))
    pos = (y[:, None] == y[None, :]) & ~eye
    log_p = logits.log_softmax(1).masked_fill(~pos, 0.0)
    has = pos.any(1)
    return -(log_p.sum(1)[has] / pos.sum(1)[has]).mean() if bool(has.any()) else z.new_zeros(())


def class_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity between different images of the same class (0 when no class has two)."""
    z = torch.nn.functional.normalize(x.flatten(1).float(), dim=1)
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    return (z @ z.t())[same].mean() if bool(same.any()) else z.new_zeros(())


@register_method("kfs")
class KFS(Distiller):
    """KFS (Lee et al., 2022): latent codes per class and shared decoders, trained by distribution matching."""
    family = "factorized"
    paper = "Lee et al., 2022, Dataset Condensation with Latent Space Knowledge Factorization and Sharing"
    Config = KFSConfig
    eval_augment = "dsa"

    def make_plan(self) -> StoragePlan:
        """The storage plan: latents at ``1/latent_scale`` (or coarser) and ``decoders`` decoder networks."""
        c = self.cfg
        r = self.real
        if c.decoders < 1 or c.latent_scale < 1:
            raise ConfigError(f"kfs: decoders and latent_scale must be >= 1; got {c.decoders}, {c.latent_scale}.")
        scales = tuple(sorted({c.latent_scale, 2 * c.latent_scale, 4 * c.latent_scale}))
        return plan_hallucinated("kfs", r.num_classes, r.image_shape, self.ipc, c.decoders, c.decoder_channels,
                                 c.latent_channels or r.image_shape[0], scales, False, "latents")

    def init(self, g: torch.Generator) -> DistillState:
        """Latents from downsampled real images and near-identity decoders (:class:`Hallucinated`), Adam on both."""
        self.factors = Hallucinated(self.make_plan(), self.real, "latents")
        state = DistillState(params=self.factors.init_params(self.real, g, self.device))
        nets = [v for k, v in state.params.items() if k != "latents"]
        state.optimizers["syn"] = torch.optim.Adam([{"params": [state.params["latents"]], "lr": self.cfg.lr_latent},
                                                    {"params": nets, "lr": self.cfg.lr_decoder}])
        self._aug = DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy)
        return state

    def loss(self, state: DistillState, g: torch.Generator) -> torch.Tensor:
        """DM's per-class mean-embedding distance between the decoded images and a real batch (shared DSA draw)."""
        x, y = self.factors.images(state.params)
        k, b = len(self.classes), self.cfg.batch_real
        cls = torch.tensor(self.classes, device=y.device)
        order = torch.cat([torch.nonzero(y == c).flatten() for c in cls])  # class-major
        m = order.numel() // k
        net = self.new_net(g)
        for p in net.parameters():
            p.requires_grad_(False)
        xr, _ = self.real_batch(b, g)
        aug = self._aug.sample(self.real.num_classes, g, self.real.image_shape[1:])
        xr = self._aug.apply(xr, aug, cls.cpu().repeat_interleave(b))
        xs = self._aug.apply(x[order], aug, cls.cpu().repeat_interleave(m))
        with torch.no_grad(), self.autocast():
            er = torch.cat([net.embed(c).float() for c in xr.split(256)]).view(k, b, -1)
        with self.autocast():
            es = net.embed(xs).float().view(k, m, -1)
        loss = mean_embedding_distance(er, es)
        c = self.cfg
        if c.lambda_contrast > 0:
            loss = loss + c.lambda_contrast * supervised_contrastive(es.flatten(0, 1), cls.repeat_interleave(m),
                                                                     c.temperature)
        if c.lambda_diversity > 0:
            loss = loss + c.lambda_diversity * class_similarity(x[order], y[order])
        return loss

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One update of latents and decoders on :meth:`loss`."""
        loss = self.loss(state, g)
        self.update(state, loss)
        return {"loss": float(loss.detach())}

    def export(self, state: DistillState) -> SyntheticSet:
        """The latents and decoder weights with the ``hallucinator`` decoder."""
        return self.factors.export(self, state)


# ====================================================================== HaBa
@dataclass
class HaBaConfig(MTTConfig):
    """Options of HaBa (Liu et al., NeurIPS 2022): MTT's plus hallucinators, basis scales, the adversary."""
    hallucinators: int = 5
    hallucinator_channels: int = 3
    basis_scales: str = "1,2,4"  # resolutions tried, in order, when full-size bases do not fit the budget
    lr_hal: float = 0.001  # Adam on the hallucinators (bases use MTT's image schedule)
    lambda_con: float = 0.1  # weight of the adversarial contrastive constraint
    lr_feat: float = 0.001  # Adam on the feature extractor of the constraint
    batch_real_feat: int = 256
    batch_syn: int = field(default=0, metadata={"min": -1})  # 0: ipc x classes decoded images per student step, the raw set's size at this storage
    #   budget, so a student step costs what MTT's does; -1: every decoded image (all 450 at MNIST IPC 10 took
    #   21.8 GB with unroll_memory=autograd; use unroll_memory=adjoint)


@register_method("haba")
class HaBa(MTT):
    """HaBa (Liu et al., NeurIPS 2022): bases and hallucinators trained by trajectory matching plus an adversary."""
    family = "factorized"
    paper = "Liu et al., NeurIPS 2022, Dataset Distillation via Factorization"
    Config = HaBaConfig
    eval_augment = "dsa"

    def make_plan(self) -> StoragePlan:
        """The storage plan: bases at the first of ``basis_scales`` that fits, and ``hallucinators`` networks."""
        c, r = self.cfg, self.real
        try:
            scales = tuple(int(s) for s in str(c.basis_scales).split(",") if s.strip())
        except ValueError as exc:
            raise ConfigError(f"haba: basis_scales must be comma-separated integers; got {c.basis_scales!r}.") from exc
        if c.hallucinators < 1 or not scales or min(scales) < 1:
            raise ConfigError("haba: hallucinators >= 1 and basis_scales of integers >= 1 are needed.")
        return plan_hallucinated("haba", r.num_classes, r.image_shape, self.ipc, c.hallucinators,
                                 c.hallucinator_channels, r.image_shape[0], scales, True, "bases")

    def init(self, g: torch.Generator) -> DistillState:
        """Bases from real images and hallucinators (:class:`Hallucinated`), MTT's step size, the feature extractor."""
        self.experts()
        self.factors = Hallucinated(self.make_plan(), self.real, "bases")
        state = DistillState(params=self.factors.init_params(self.real, g, self.device))
        state.params["lr"] = torch.tensor(float(self.cfg.lr_teacher), device=self.device, requires_grad=True)
        _, _, lr_img, lr_lr = self.settings()
        c = self.cfg
        # a basis pixel feeds n hallucinators x scale^2 image pixels, so its gradient is that many pixel
        # gradients summed: MTT's per-pixel learning rate is divided by that fan-out (measured: without it the
        # IPC-1 bases of digits diverge within 10 steps)
        fan_out = self.factors.plan.settings["n"] * self.factors.plan.settings["scale"] ** 2
        state.optimizers["syn"] = torch.optim.SGD(
            [{"params": [state.params["bases"]], "lr": lr_img / fan_out, "momentum": c.momentum_img},
             {"params": [state.params["lr"]], "lr": lr_lr, "momentum": c.momentum_lr}], lr=1.0)
        hal = [v for k, v in state.params.items() if k not in ("bases", "lr")]
        state.optimizers["hal"] = torch.optim.Adam(hal, lr=c.lr_hal)
        feat = self.new_net(g)
        state.modules["feat"] = feat
        state.optimizers["feat"] = torch.optim.Adam(feat.parameters(), lr=c.lr_feat)
        return state

    def hallucinator_similarity(self, feat: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of the extractor's features of images made from one basis by different networks."""
        n = self.factors.plan.settings["n"]
        if n < 2:
            return x.new_zeros(())
        e = F.normalize(feat.embed(x).float(), dim=1).view(n, x.shape[0] // n, -1)
        gram = torch.einsum("hbd,kbd->bhk", e, e)
        return ((gram.sum((1, 2)) - n) / (n * (n - 1))).mean()

    def loss(self, state: DistillState, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_mtt + lambda * sim, L_mtt, sim)`` for one expert segment."""
        x, y = self.factors.images(state.params)
        syn_steps, max_start, _, _ = self.settings()
        start, target = self.experts().sample(g, self.cfg.expert_epochs, max_start)
        aug = self.augmenter()
        batch = self.cfg.batch_syn or self.ipc * self.real.num_classes
        batch = x.shape[0] if batch < 0 else batch
        plan = UnrollPlan.draw(x.shape[0], syn_steps, batch, g, aug, self.real.image_shape[1:])
        with self.autocast():
            l_mtt = mtt_loss(self.student(), start, target, x, y, state.params["lr"], plan, aug,
                             **self.unroll_kw())
            sim = self.hallucinator_similarity(state.modules["feat"], x)
        return l_mtt + self.cfg.lambda_con * sim, l_mtt, sim

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Bases, hallucinators and step size on :meth:`loss`, then one step of the adversarial feature extractor."""
        state.optimizers["hal"].zero_grad(set_to_none=True)
        loss, l_mtt, sim = self.loss(state, g)
        if self.update(state, loss / self.world_size):
            hal = state.optimizers["hal"]
            if self.world_size > 1:
                import torch.distributed as dist

                for group in hal.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
            hal.step()
        # the adversary: classify real data and make one basis's hallucinations look alike
        feat, opt = state.modules["feat"], state.optimizers["feat"]
        x, _ = self.factors.images(state.params)
        xr, yr = self.real_batch(max(1, self.cfg.batch_real_feat // self.real.num_classes), g)
        with self.autocast():
            l_feat = target_loss(feat(xr), yr) - self.cfg.lambda_con * self.hallucinator_similarity(feat, x.detach())
        opt.zero_grad(set_to_none=True)
        l_feat.backward()
        opt.step()
        for p in state.params.values():
            p.grad = None
        return {"loss": float(l_mtt.detach()), "sim": float(sim.detach()), "syn_lr": float(state.params["lr"].detach())}

    def export(self, state: DistillState) -> SyntheticSet:
        """The bases and hallucinator weights with the ``hallucinator`` decoder and the learned step size."""
        lr = float(state.params["lr"].detach())
        return self.factors.export(self, state, lr=lr if lr > 0 else None)

