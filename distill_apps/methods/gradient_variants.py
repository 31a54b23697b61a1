"""Gradient-matching variants built on DC/DSA (:mod:`distill_apps.methods.gradient`): DCC and IDC.

- ``dcc`` (Lee et al., ICML 2022, "Dataset Condensation with Contrastive Signals"): DC matches the gradient of
  each class's loss separately, which ignores what tells the classes apart. DCC matches the gradient of the loss
  over all classes jointly (the class-collaborative signal): one real batch holding every class and the whole
  synthetic set, each class seen through its own DSA draw on both sides. Otherwise DSA's loop.
- ``idc`` (Kim et al., ICML 2022, "Dataset Condensation via Efficient Synthetic-Data Parameterization"):
  *multi-formation*: each stored image is a ``factor x factor`` grid of tiles, and each tile is upsampled to the
  full resolution, so ``k`` stored images per class (the storage of ``k`` plain images) yield ``k * factor^2``
  training images. The matching network is *trained on real data* between synthetic updates (instead of on the
  synthetic set as in DC), and the gradient distance is IDC's plain (non-cosine) distance over all parameters
  (``dis_metric="mse"``; ``"l1"`` also available). ``idc-i`` is the same without multi-formation (factor 1).
  The summary stores the compact form (``params["x"]``) with the ``idc-multiformation`` decoder, so
  ``storage_floats()`` counts what is stored and ``materialize()`` gives the decoded images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..engine import DistillState, register_method
from ..errors import ConfigError, DataError
from ..matching import gradient_distance, loss_gradients
from ..parameterisation import init_pixels
from ..summary import ChunkedDecoder, SyntheticSet, register_decoder
from ..train import fit
from .gradient import DSAConfig, DSAMethod

DECODER = "idc-multiformation"


# ---------------------------------------------------------------------- DCC
@dataclass
class DCCConfig(DSAConfig):
    """Options of DCC (Lee et al., ICML 2022): DSA's."""
    pass


@register_method("dcc")
class DCC(DSAMethod):
    """DCC (Lee et al., ICML 2022): DSA matching the gradient of the loss over all classes jointly."""
    paper = "Lee et al., ICML 2022, Dataset Condensation with Contrastive Signals"
    Config = DCCConfig
    multilabel = False

    def match_loss(self, net, x_syn: torch.Tensor, y_syn: torch.Tensor, g: torch.Generator,
                   t_syn: torch.Tensor | None = None) -> torch.Tensor:
        """Distance between the gradients of the loss over all classes at once (real batch vs synthetic set)."""
        aug = self.dsa()
        k = self.real.num_classes
        xr, yr = self.real_batch(self.cfg.batch_real, g, classes=list(range(k)))
        params = aug.sample(k, g, self.real.image_shape[1:])  # one draw per class, shared by both sides
        xr, xs = aug.apply(xr, params, yr), aug.apply(x_syn, params, y_syn)
        gr = loss_gradients(net, xr, yr, False, self.autocast())
        gs = loss_gradients(net, xs, y_syn, True, self.autocast())
        # the joint loss does not split over classes: every rank computes all of it, so the summed gradient
        # of the all-reduce is divided back to one copy
        return gradient_distance(gs, gr, self.cfg.dis_metric) / self.world_size


# ---------------------------------------------------------------------- IDC multi-formation
def multiformation(x: torch.Tensor, factor: int, mode: str = "bilinear") -> torch.Tensor:
    """Decode ``(n, C, H, W)`` stored images into ``(n * factor^2, C, H, W)``: split each into a ``factor x factor``
    grid of tiles (row-major) and upsample every tile back to ``(H, W)``. Differentiable."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    if h % factor or w % factor:
        raise ConfigError(f"IDC factor {factor} does not divide the image size {h}x{w}: use a factor that divides "
                          "both sides (2 for 8x8, 28x28 and 32x32 images).")
    th, tw = h // factor, w // factor
    tiles = x.view(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5).reshape(n * factor * factor, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode=mode, align_corners=False if mode != "nearest" else None)


def compose(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse layout of :func:`multiformation`'s split: ``(n * factor^2, C, h, w)`` tiles -> ``(n, C, h*f, w*f)``."""
    m, c, th, tw = x.shape
    n = m // (factor * factor)
    return x.view(n, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, th * factor, tw * factor)


def _multiformation_labels(params: dict[str, torch.Tensor], spec: dict[str, Any]):
    try:
        factor, labels, n = int(spec["factor"]), spec["labels"], params["x"].shape[0]
    except KeyError as exc:
        raise DataError(f"An {DECODER} summary needs params['x'] and spec factor/labels; missing {exc}.") from exc
    y = torch.as_tensor(labels, dtype=torch.int64)
    if y.shape != (n,):
        raise DataError(f"{DECODER}: {n} stored images but {len(labels)} labels in the spec.")
    return y.repeat_interleave(factor * factor), None


def _multiformation_bind(params: dict[str, torch.Tensor], spec: dict[str, Any], device=None):
    """Decoded image ``i`` is tile ``i % f^2`` of stored image ``i // f^2``: a chunk decodes the stored images it
    touches (all of them, in one call, when the chunk is the whole summary)."""
    _multiformation_labels(params, spec)
    factor, mode = int(spec["factor"]), str(spec.get("mode", "bilinear"))
    dev = device if device is not None else params["x"].device
    x, ff = params["x"].float().to(dev), factor * factor

    def images(idx: torch.Tensor) -> torch.Tensor:
        stored, tile = idx // ff, idx % ff
        keep = torch.unique(stored)
        out = multiformation(x[keep.to(dev)], factor, mode)
        return out[(torch.searchsorted(keep, stored) * ff + tile).to(dev)]

    return images


# Decoder of IDC summaries: ``params["x"]`` stored images, ``spec`` = {factor, mode, labels}.
decode_multiformation = register_decoder(DECODER)(ChunkedDecoder(_multiformation_labels, _multiformation_bind))


@dataclass
class IDCConfig(DSAConfig):
    """Options of IDC (Kim et al., ICML 2022): multi-formation factor, real-data network training, MSE distance."""
    steps: int = 2000
    quick_steps: int = 4
    factor: int = 2
    decode: str = "bilinear"
    outer_loop: int = 100  # synthetic updates per sampled network
    inner_loop: int = 0  # unused: IDC trains the network on real data (net_steps) instead of on the synthetic set
    net_steps: int = 2  # SGD steps on real minibatches between synthetic updates
    batch_net: int = 256
    lr_net: float = 0.01
    lr_img: float = 0.005
    momentum_img: float = 0.5
    batch_real: int = 64
    dis_metric: str = "mse"
    dsa_strategy: str = "color_crop_cutout"


@dataclass
class IDCIConfig(IDCConfig):
    """Options of IDC-I: IDC's with factor 1 (no multi-formation)."""
    factor: int = 1


@register_method("idc")
class IDC(DSAMethod):
    """IDC (Kim et al., ICML 2022): multi-formation images, gradient matching on networks trained on real data."""
    paper = "Kim et al., ICML 2022, Dataset Condensation via Efficient Synthetic-Data Parameterization"
    Config = IDCConfig
    multilabel = False

    def factor(self) -> int:
        """The multi-formation factor (tiles per side), checked."""
        f = int(self.cfg.factor)
        if f < 1:
            raise ConfigError(f"IDC factor must be >= 1; got {f}.")
        return f

    def init(self, g: torch.Generator) -> DistillState:
        """Each stored image starts as a grid of ``factor^2`` downsampled real images of its class."""
        f = self.factor()
        x, y, _ = init_pixels(self.real, self.ipc * f * f, g, self.device, self.cfg.init, self.name)  # ipc*f^2 each
        h, w = x.shape[-2:]
        if f > 1:
            multiformation(x[:1], f)  # checks divisibility with a clear error
            x = compose(F.interpolate(x, size=(h // f, w // f), mode="area"), f)
            y = y[:: f * f]
        x = x.contiguous().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=self.cfg.lr_img, momentum=self.cfg.momentum_img)
        return DistillState(params={"x": x}, optimizers={"syn": opt}, buffers={"y": y})

    def decoded(self, state: DistillState) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded training images and their labels, differentiable in the stored images."""
        f = self.factor()
        return multiformation(state.params["x"], f, self.cfg.decode), state.buffers["y"].repeat_interleave(f * f)

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One network: ``outer_loop`` updates of the stored images, ``net_steps`` real-data SGD steps between."""
        cfg = self.cfg
        net = self.new_net(g)
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=0.9, weight_decay=5e-4)
        aug = self.dsa()
        n_real = self.real.size("train")
        total = 0.0
        for ol in range(cfg.outer_loop):
            xs, ys = self.decoded(state)
            loss = self.match_loss(net, xs, ys, g)
            self.update(state, loss)
            total += float(loss.detach())
            if ol == cfg.outer_loop - 1:
                break
            idx = torch.randint(n_real, (cfg.net_steps * cfg.batch_net,), generator=g)
            fit(net, self.real.view("train", self.device, idx), self.real.labels(idx), steps=cfg.net_steps,
                batch_size=cfg.batch_net, optimizer=opt_net, decay_at_half=False, generator=g, amp=cfg.amp,
                augment=(lambda xb, gg: aug(xb, gg)))
        return {"loss": total / cfg.outer_loop}

    def export(self, state: DistillState) -> SyntheticSet:
        """The stored images with the ``idc-multiformation`` decoder (plain images at factor 1)."""
        f = self.factor()
        if f == 1:
            return self.synthetic(state, state.params["x"], state.buffers["y"], meta={"factor": 1})
        y = state.buffers["y"]
        return self.synthetic(state, None, y, params={"x": state.params["x"]}, decoder=DECODER,
                              decoder_spec={"factor": f, "mode": self.cfg.decode, "labels": y.long().tolist()},
                              meta={"factor": f, "stored_images": int(y.numel()),
                                    "decoded_images": int(y.numel()) * f * f})


@register_method("idc-i")
class IDCI(IDC):
    """IDC-I (Kim et al., ICML 2022): IDC without multi-formation."""
    paper = "Kim et al., ICML 2022 (IDC-I: IDC without multi-formation)"
    Config = IDCIConfig
