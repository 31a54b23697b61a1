"""IT-GAN (Zhao & Bilen, 2022, "Synthesizing Informative Training Samples with GAN").

A generator ``G`` trained on the dataset is kept fixed; the summary is a set of latent vectors ``z``:

1. **Generator.** The user's generator file (``generator_path``), or, when there is none, a compact DCGAN-style
   generator that the package trains itself (:func:`train_generator`, tqdm progress) and saves atomically with
   :func:`~distill_apps.safe_io.write` under the cache folder, keyed by dataset, architecture, steps and seed.
2. **Inversion.** ``ipc`` real images per class are inverted: ``z_i = argmin_z ||G(z) - x_i||^2``.
3. **Latent optimisation.** Each step samples a random network ``psi`` and minimises the feature-distribution
   matching loss (DM's per-class mean-embedding distance between ``G(z)`` and a real batch, one DSA draw per
   class) plus ``lambda_reg`` times the reconstruction regulariser ``||psi(G(z_i)) - psi(x_i)||^2`` that keeps
   every latent near its inverted real image in feature space.

The summary stores only the latents (``params["z"]``) and points at the generator file in ``decoder_spec``
(path, SHA-256 of the file, architecture); ``materialize()`` re-runs ``G`` and refuses a missing or changed file.
Its ``storage_floats()`` therefore counts latents only: IT-GAN's "IPC" is latents per class, as in the paper,
with the generator shared by reference.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import safe_io
from ..augment import DEFAULT_STRATEGY, DSA
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError, SummaryFormatError
from ..matching import mean_embedding_distance
from ..parameterisation import draw_real
from ..runtime import derive_seed, seeded_global_rng
from ..summary import ChunkedDecoder, SyntheticSet, register_decoder

GEN_KIND = "generator"
GEN_VERSION = 1


def cache_dir() -> Path:
    """``$DISTILL_APPS_CACHE`` or ``~/.cache/distill_apps``: where trained generators are kept."""
    from ..data.registry import cache_root

    return cache_root()


class Generator(nn.Module):
    """A compact DCGAN-style generator: linear -> 2 x (upsample, conv, GroupNorm, ReLU) -> conv -> tanh.

    It outputs pixels in [0, 1] and normalises them with the dataset's ``mean``/``std``, so ``G(z)`` lives in
    the same space as ``RealData.x_train``. GroupNorm (per sample) keeps train and eval modes identical.
    """

    def __init__(self, nz: int, ngf: int, channels: int, image_size: list[int] | tuple[int, int],
                 mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...]) -> None:
        super().__init__()
        self.nz, self.image_size = nz, tuple(int(s) for s in image_size)
        h0, w0 = math.ceil(self.image_size[0] / 4), math.ceil(self.image_size[1] / 4)
        self.h0, self.w0, self.c0 = h0, w0, 2 * ngf
        self.fc = nn.Linear(nz, self.c0 * h0 * w0)
        self.body = nn.Sequential(
            nn.GroupNorm(8, self.c0), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(self.c0, ngf, 3, padding=1),
            nn.GroupNorm(8, ngf), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ngf, ngf, 3, padding=1),
            nn.GroupNorm(8, ngf), nn.ReLU(),
            nn.Conv2d(ngf, channels, 3, padding=1), nn.Tanh())
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``G(z)`` in the dataset's normalised space."""
        h = self.body(self.fc(z).view(-1, self.c0, self.h0, self.w0))
        if tuple(h.shape[-2:]) != self.image_size:  # sizes not divisible by 4 (28x28 is; 30x30 would not be)
            h = F.interpolate(h, size=self.image_size, mode="bilinear", align_corners=False)
        return ((h + 1) / 2 - self.mean) / self.std


class Discriminator(nn.Module):
    """Two strided convs and a linear critic (LeakyReLU, spectral norm), for the package's own GAN training only."""

    def __init__(self, ndf: int, channels: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, ndf, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, 2 * ndf, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten())
        with torch.no_grad():
            n = self.net(torch.zeros(1, channels, *image_size)).shape[1]
        self.head = nn.Linear(n, 1)
        for m in [*self.net, self.head]:  # spectral norm: measured to keep the tiny GAN from collapsing
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One realness score per image."""
        return self.head(self.net(x)).squeeze(1)


def check_arch(arch: Any) -> dict[str, Any]:
    """Every field of a generator architecture by type and range (it comes from a file)."""
    from ..validation import HeaderFields

    if not isinstance(arch, dict):
        raise SummaryFormatError(f"Generator architecture {arch!r} is not a JSON object; the summary or generator "
                                 "file is corrupt.")
    f = HeaderFields("the generator architecture", "generator", arch)
    f.only(("name", "nz", "ngf", "channels", "image_size", "mean", "std"))
    f.str("name", optional=True)
    f.int("nz", 1, 4096)
    if f.int("ngf", 8, 1024) % 8:
        raise f.fail("ngf", "a multiple of 8", arch["ngf"])
    c = f.int("channels", 1, 4)
    f.ints("image_size", 1, 1024, min_len=2, max_len=2)
    f.floats("mean", length=c)
    f.floats("std", length=c, lo=0.0, lo_open=True)
    return arch


def build_generator(arch: dict[str, Any]) -> Generator:
    """A :class:`Generator` of a checked architecture (fields as :func:`check_arch` validates them)."""
    arch = check_arch(arch)
    return Generator(arch["nz"], arch["ngf"], arch["channels"], arch["image_size"], arch["mean"], arch["std"])


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_generator(real, arch: dict[str, Any], steps: int, g: torch.Generator, batch_size: int = 64,
                    lr: float = 2e-4, device: torch.device | str = "cpu", progress: bool = True) -> Generator:
    """Train ``Generator(arch)`` as a non-saturating GAN on ``real``'s training images for ``steps`` minibatches."""
    dev = torch.device(device)
    with seeded_global_rng(g):
        gen = build_generator(arch).to(dev)
        disc = Discriminator(max(8, int(arch["ngf"])), int(arch["channels"]), tuple(arch["image_size"])).to(dev)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    n = real.size("train")
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"itgan: training a generator on {real.name}", leave=False, disable=None)
    for _ in it:
        xr = real.images(torch.randint(n, (min(batch_size, n),), generator=g), device=dev)
        z = torch.randn(xr.shape[0], gen.nz, generator=g).to(dev)
        xf = gen(z)
        loss_d = F.softplus(-disc(xr)).mean() + F.softplus(disc(xf.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-disc(xf)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    gen.eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen


def save_generator(path: str | os.PathLike, gen: Generator, arch: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write a generator's weights and architecture atomically (:func:`distill_apps.safe_io.write`)."""
    return safe_io.write(path, gen.state_dict(), {"arch": arch, "info": info}, GEN_KIND, GEN_VERSION)


def load_generator(path: str | os.PathLike, expect_sha256: str | None = None,
                   device: torch.device | str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Load a generator file; with ``expect_sha256`` refuse a file that differs from the one a summary used."""
    path = Path(path)
    if not path.is_file():
        raise SummaryFormatError(
            f"The IT-GAN generator file {path} is missing. A summary made by itgan stores latents and points at "
            "its generator: copy the generator file back to that path (or re-run the distillation).")
    if expect_sha256 is not None:
        got = file_sha256(path)
        if got != expect_sha256:
            raise SummaryFormatError(
                f"The IT-GAN generator file {path} changed since the summary was made (sha256 {got[:12]}... vs "
                f"{expect_sha256[:12]}... recorded): its latents would decode to other images. Restore the "
                "original generator file, or re-distil with the new generator.")
    tensors, header = safe_io.read(path, GEN_KIND, GEN_VERSION)
    from ..validation import HeaderFields

    f = HeaderFields(path, "generator", header)
    f.only(("kind", "format_version", "sha256", "arch", "info"))
    f.dict("info")
    gen = build_generator(f.dict("arch"))
    try:
        gen.load_state_dict(tensors)
    except RuntimeError as exc:
        raise SummaryFormatError(f"{path}: the weights do not fit the recorded architecture ({exc}).") from exc
    gen.to(device).eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen, header


def invert(gen: Generator, x: torch.Tensor, steps: int, lr: float, g: torch.Generator) -> torch.Tensor:
    """GAN inversion: latents ``z`` minimising ``||G(z) - x||^2`` per image (Adam from a random start)."""
    z = torch.randn(x.shape[0], gen.nz, generator=g).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        loss = ((gen(z) - x) ** 2).flatten(1).sum(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return z.detach()


def _itgan_spec(params: dict[str, torch.Tensor], spec: dict[str, Any]) -> tuple[int, int, str]:
    """Validate an IT-GAN decoder spec against its latents; returns ``(num_classes, per_class, sha256)``."""
    import re

    from ..validation import HeaderFields

    f = HeaderFields("the summary's decoder_spec", "itgan decoder", spec)
    f.only(("path", "sha256", "arch", "num_classes", "per_class"))
    k, per = f.int("num_classes", 1, 1_000_000), f.int("per_class", 1, 1_000_000)
    sha = f.str("sha256")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise f.fail("sha256", "64 hexadecimal digits", sha)
    z = params.get("z")
    if z is None or z.ndim != 2 or z.shape[0] != k * per:
        raise f.fail("per_class", f"the latents' row count / num_classes (z holds {None if z is None else tuple(z.shape)})",
                     per)
    return k, per, sha


def _itgan_labels(params: dict[str, torch.Tensor], spec: dict[str, Any]):
    k, per, _ = _itgan_spec(params, spec)
    return torch.arange(k).repeat_interleave(per), None


def _itgan_bind(params: dict[str, torch.Tensor], spec: dict[str, Any], device=None):
    """Images ``G(z[idx])`` from the generator file named in ``spec`` (loaded once, checked against its SHA-256).
    The file is opened only inside a trusted root (:mod:`distill_apps.trusted_paths`): a summary names it, the
    user did not."""
    from ..trusted_paths import resolve_trusted

    _, _, sha = _itgan_spec(params, spec)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen, _ = load_generator(resolve_trusted(spec.get("path"), "IT-GAN generator"), sha, device=dev)
    z = params["z"].float().to(dev)
    if z.shape[1] != gen.nz:
        from ..validation import HeaderFields

        raise HeaderFields("the summary's decoder_spec", "itgan decoder", spec).fail(
            "arch", f"a generator of {z.shape[1]}-dimensional latents", gen.nz)
    return lambda idx: gen(z[idx.to(dev)])


decode_itgan = register_decoder("itgan")(ChunkedDecoder(_itgan_labels, _itgan_bind))


@dataclass
class ITGANConfig(MethodConfig):
    """Options of IT-GAN (Zhao & Bilen, 2022): the generator, GAN inversion and the latent optimisation."""
    steps: int = 5000
    quick_steps: int = 100
    generator_path: str = ""  # a trained generator file; empty: train one and cache it
    nz: int = 64
    ngf: int = 32
    gan_steps: int = 300  # minibatches of the package's own GAN training
    gan_batch: int = 64
    invert_steps: int = 300
    invert_lr: float = 0.05
    lr_latent: float = 0.01  # Adam on the latents
    lambda_reg: float = 0.01  # weight of the feature-space reconstruction regulariser
    batch_real: int = 256
    dsa_strategy: str = DEFAULT_STRATEGY


@register_method("itgan")
class ITGAN(Distiller):
    """IT-GAN (Zhao & Bilen, 2022): latents of a fixed generator, optimised by distribution matching."""
    family = "distribution"
    paper = "Zhao & Bilen, 2022, Synthesizing Informative Training Samples with GAN"
    Config = ITGANConfig
    eval_augment = "dsa"

    # ---------------------------------------------------------------- the generator
    def arch(self) -> dict[str, Any]:
        """The package's own generator architecture for this dataset (checked ``nz`` and ``ngf``)."""
        r = self.real
        if self.cfg.ngf < 8 or self.cfg.ngf % 8 or self.cfg.nz < 1:
            raise ConfigError(f"itgan: ngf must be a positive multiple of 8 (GroupNorm of 8 groups) and nz >= 1; "
                              f"got ngf={self.cfg.ngf}, nz={self.cfg.nz}.")
        return {"name": "dcgan-small", "nz": self.cfg.nz, "ngf": self.cfg.ngf, "channels": r.image_shape[0],
                "image_size": list(r.image_shape[1:]), "mean": list(r.mean), "std": list(r.std)}

    def default_generator_path(self) -> Path:
        """Where the package's own generator for this dataset, architecture and seed is cached."""
        key = derive_seed("itgan-generator", self.real.name, sorted(self.arch().items()), self.cfg.gan_steps,
                          self.cfg.gan_batch, self.seed)
        return cache_dir() / "generators" / f"{self.real.name.replace(':', '_')}-{key:016x}.safetensors"

    def generator(self) -> tuple[Generator, Path]:
        """Load the configured generator, or train (once; then cached on disk) the package's own."""
        if self.cfg.generator_path:
            path = Path(self.cfg.generator_path).expanduser().resolve()
            from ..trusted_paths import allow

            allow(path)  # the user passed it: summaries made from it may be decoded in this process
            if not path.is_file():
                raise ConfigError(f"itgan: generator_path {path} does not exist. Point it at a generator file "
                                  "written by distill-apps, or leave it empty to train one on the dataset.")
            gen, header = load_generator(path, device=self.device)
            mine, theirs = self.arch(), header.get("arch", {})
            bad = [k for k in ("channels", "image_size") if theirs.get(k) != mine[k]]
            if bad:
                raise ConfigError(f"itgan: the generator at {path} makes {theirs.get('channels')}x"
                                  f"{theirs.get('image_size')} images but {self.real.name} has {mine['channels']}x"
                                  f"{mine['image_size']}: use a generator trained on this dataset.")
            return gen, path
        path = self.default_generator_path()
        if path.is_file():
            gen, _ = load_generator(path, device=self.device)
            return gen, path
        g = torch.Generator().manual_seed(derive_seed("itgan-gan", self.seed))
        gen = train_generator(self.real, self.arch(), self.cfg.gan_steps, g, self.cfg.gan_batch,
                              device=self.device, progress=self.rank == 0)
        if self.rank == 0:
            save_generator(path, gen, self.arch(), {"dataset": self.real.name, "gan_steps": self.cfg.gan_steps,
                                                    "seed": self.seed})
        return gen, path

    # ---------------------------------------------------------------- the method
    def init(self, g: torch.Generator) -> DistillState:
        """The generator, then latents inverted from ``ipc`` real images per class (kept to regularise)."""
        self._gen, self._gen_path = self.generator()
        self._aug = DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy)
        x, y, _ = draw_real(self.real, self.ipc, g, self.device)
        z = invert(self._gen, x, self.cfg.invert_steps, self.cfg.invert_lr, g).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.cfg.lr_latent)
        return DistillState(params={"z": z}, optimizers={"syn": opt}, buffers={"y": y, "x_inv": x})

    def loss(self, state: DistillState, net: nn.Module, g: torch.Generator) -> tuple[torch.Tensor, float, float]:
        """``(DM loss + lambda_reg * feature reconstruction, DM loss, reconstruction)`` on one random network."""
        k, b, ipc = len(self.classes), self.cfg.batch_real, self.ipc
        cls = torch.tensor(self.classes)
        z = state.params["z"].view(self.real.num_classes, ipc, -1)[cls.to(state.params["z"].device)].flatten(0, 1)
        x_inv = state.buffers["x_inv"].view(self.real.num_classes, ipc, *self.real.image_shape)[cls].flatten(0, 1)
        xr, _ = self.real_batch(b, g)
        aug = self._aug.sample(self.real.num_classes, g, self.real.image_shape[1:])
        xr = self._aug.apply(xr, aug, cls.repeat_interleave(b))
        xs = self._gen(z)
        with torch.no_grad(), self.autocast():
            er = torch.cat([net.embed(c).float() for c in xr.split(256)]).view(k, b, -1)
            e_inv = net.embed(x_inv).float()
        with self.autocast():
            es = net.embed(self._aug.apply(xs, aug, cls.repeat_interleave(ipc))).float().view(k, ipc, -1)
            e_rec = net.embed(xs).float()
        match = mean_embedding_distance(er, es)
        reg = ((e_rec - e_inv) ** 2).sum(1).mean()
        return match + self.cfg.lambda_reg * reg, float(match.detach()), float(reg.detach())

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One random network; one Adam step of the latents on :meth:`loss`."""
        net = self.new_net(g)
        for p in net.parameters():
            p.requires_grad_(False)
        loss, match, reg = self.loss(state, net, g)
        self.update(state, loss)
        return {"match": match, "reg": reg}

    def export(self, state: DistillState) -> SyntheticSet:
        """The latents with the ``itgan`` decoder, pointing at the generator file by path and SHA-256."""
        spec = {"path": str(self._gen_path), "sha256": file_sha256(self._gen_path), "arch": self.arch(),
                "num_classes": self.real.num_classes, "per_class": self.ipc}
        return self.synthetic(state, None, state.buffers["y"], params={"z": state.params["z"]}, decoder="itgan",
                              decoder_spec=spec, meta={"generator": str(self._gen_path)})
