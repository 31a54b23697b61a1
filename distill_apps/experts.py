"""Expert trajectories for trajectory matching (MTT, Cazenavette et al., CVPR 2022; TESLA; HaBa).

An *expert* is a network trained on the real data; its *trajectory* is the list of its parameters at the start
and after every epoch. MTT samples an expert and an epoch ``s`` and asks a student trained on the synthetic set
from the expert's epoch-``s`` parameters to land near its epoch-``s + M`` parameters.

Small API (stable, for other methods)::

    from distill_apps.experts import ExpertConfig, get_or_train_experts

    buf = get_or_train_experts(real, "convnet", config=ExpertConfig(num_experts=5, epochs=20), seed=0)
    start, target = buf.sample(g, expert_epochs=2, max_start_epoch=10)   # two {param name: tensor} dicts
    theta = buf.params(expert=0, epoch=10)                                # any snapshot
    len(buf), buf.epochs                                                  # experts, last epoch stored

Each trajectory is one file ``expert_XXX.safetensors`` written with :func:`distill_apps.safe_io.write` (kind
``"trajectory"``): one tensor per parameter of shape ``(epochs + 1, *param_shape)`` and a JSON header naming the
dataset, model, seed and training settings. Files live in a folder named by a hash of those settings (the *key*)
under ``cache_dir`` (default ``$DISTILL_APPS_CACHE/experts`` or ``~/.cache/distill_apps/experts``), so a second
run with the same settings reuses them and a run with other settings never mixes them up. A corrupt, truncated
or foreign file is refused (:class:`~distill_apps.errors.SummaryFormatError` naming the file and the fix).

Experts are trained through :func:`distill_apps.train.fit` (one call per epoch with a persistent optimiser), with
MTT's settings by default: SGD lr 0.01, no momentum or weight decay, batch 256, DSA augmentation, 50 epochs, 100
experts. With ``eager=False`` an expert is trained the first time it is needed, so a short run trains only the
experts it samples. Expert ``i`` is always trained from the generator ``("expert", seed, i)``, so whether it was
trained eagerly, lazily or by another process, the file is the same.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import safe_io
from .augment import DSA
from .data import RealData
from .errors import ConfigError, SummaryFormatError
from .runtime import generator
from .train import fit

KIND = "trajectory"
FORMAT_VERSION = 1
CACHE_ENV = "DISTILL_APPS_CACHE"

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ExpertConfig:
    """How experts are trained (MTT's buffer settings by default)."""

    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: str | None = "dsa"  # "dsa" or None

    def __post_init__(self) -> None:
        """Refuse fewer than one expert or epoch and unknown augmentations."""
        if self.num_experts < 1 or self.epochs < 1:
            raise ConfigError(f"Experts need num_experts >= 1 and epochs >= 1; got {self.num_experts}, {self.epochs}.")
        if self.augment not in (None, "dsa"):
            raise ConfigError(f"Expert augmentation must be 'dsa' or None; got {self.augment!r}.")


def dataset_fingerprint(real: RealData) -> str:
    """A cheap, stable hash of the training split (labels in full, a strided sample of the pixels)."""
    h = hashlib.sha256()
    h.update(real.name.encode())
    n = real.size("train")
    h.update(str((n, *real.image_shape)).encode())
    h.update(real.y_train.detach().cpu().contiguous().numpy().tobytes())
    stride = max(1, n // 512)
    h.update(real.images(slice(None, None, stride)).detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where expert trajectories are cached: ``$DISTILL_APPS_CACHE/experts``, else ``~/.cache/distill_apps/experts``."""
    from .data.registry import cache_root

    return cache_root() / "experts"


def trajectory_key(real: RealData, model: str, config: ExpertConfig, seed: int) -> dict[str, Any]:
    """What identifies a set of expert trajectories (the epoch count and expert count are part of it)."""
    cfg = asdict(config)
    cfg.pop("num_experts")  # more experts extend a buffer, they do not change the existing ones
    return {"dataset": real.name, "data": dataset_fingerprint(real), "model": model, "seed": seed, "train": cfg}


def _key_hash(key: dict[str, Any]) -> str:
    """Short SHA-256 of an expert key (the cache folder's name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def train_expert(real: RealData, model: str, config: ExpertConfig, seed: int, index: int,
                 device: torch.device | str = "cpu", progress: bool = True) -> Params:
    """Train expert ``index`` on ``real``; returns ``{name: (epochs + 1, *shape)}`` parameter snapshots."""
    from .nets import build_model

    g = generator("expert", seed, index)
    net = build_model(model, real.image_shape[0], real.num_classes, real.image_shape[1:], generator=g,
                      device=device)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    dsa = DSA.for_dataset(real.flip_invariant) if config.augment == "dsa" else None
    snaps = {k: [v.detach().cpu().clone()] for k, v in net.named_parameters()}
    it = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"expert {index} ({real.name}, {model})", leave=False)
    for _ in it:
        fit(net, real.view("train"), real.y_train, epochs=1, batch_size=config.batch_size, generator=g,
            decay_at_half=False, optimizer=opt, augment=(lambda xb, gg: dsa(xb, gg)) if dsa else None)
        for k, v in net.named_parameters():
            snaps[k].append(v.detach().cpu().clone())
    return {k: torch.stack(v) for k, v in snaps.items()}


class ExpertBuffer:
    """The expert trajectories of one key, on disk, loaded lazily (a small in-memory LRU cache).

    ``sample(g, expert_epochs, max_start_epoch)`` draws an expert and a start epoch ``s`` uniformly from
    ``[0, max_start_epoch)`` and returns ``(params at s, params at s + expert_epochs)`` as float32 dicts on
    ``device``. A missing expert file is trained on demand when the buffer was built with a trainer.
    """

    def __init__(self, folder: str | os.PathLike, key: dict[str, Any], num_experts: int, epochs: int,
                 trainer=None, device: torch.device | str = "cpu", cache_size: int = 4) -> None:
        """Experts of one key in ``folder``; ``trainer(i)`` trains expert ``i`` when its file is missing; ``cache_size``
        trajectories stay in memory."""
        self.folder, self.key, self.num_experts, self.epochs = Path(folder), key, num_experts, epochs
        self.trainer, self.device, self.cache_size = trainer, torch.device(device), cache_size
        self._cache: OrderedDict[int, Params] = OrderedDict()

    def __len__(self) -> int:
        """Number of experts."""
        return self.num_experts

    def path(self, expert: int) -> Path:
        """File of expert ``expert``."""
        return self.folder / f"expert_{expert:03d}.safetensors"

    def missing(self) -> list[int]:
        """Experts whose files do not exist yet."""
        return [i for i in range(self.num_experts) if not self.path(i).is_file()]

    def save(self, expert: int, traj: Params) -> Path:
        """Write one expert's trajectory (parameters at every epoch) with safe_io."""
        header = {"key": self.key, "expert": expert, "epochs": self.epochs, "param_names": list(traj)}
        return safe_io.write(self.path(expert), traj, header, KIND, FORMAT_VERSION)

    def load(self, expert: int) -> Params:
        """The full trajectory of ``expert`` (``{name: (epochs + 1, *shape)}``), trained first if missing."""
        if not 0 <= expert < self.num_experts:
            raise ConfigError(f"Expert {expert} out of range: this buffer holds {self.num_experts} experts.")
        if expert in self._cache:
            self._cache.move_to_end(expert)
            return self._cache[expert]
        p = self.path(expert)
        if not p.is_file():
            if self.trainer is None:
                raise SummaryFormatError(f"Expert trajectory {p} does not exist; train it with get_or_train_experts.")
            with torch.enable_grad():  # may be reached from inside a caller's no_grad block
                self.save(expert, self.trainer(expert))
        try:
            tensors, header = safe_io.read(p, KIND, FORMAT_VERSION)
        except SummaryFormatError as exc:
            raise SummaryFormatError(f"{exc} Delete {p} and it will be retrained on the next run.") from exc
        self.validate(p, tensors, header, expert)
        traj = {k: tensors[k] for k in header["param_names"]}
        self._cache[expert] = traj
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return traj

    def validate(self, p: Path, tensors: Params, header: dict[str, Any], expert: int) -> None:
        """Every header field by type and value (key, expert, epochs, parameter names), and finite float
        snapshots of ``epochs + 1`` rows; anything else is refused naming the file and the fix."""
        from .validation import HeaderFields

        f = HeaderFields(p, "expert trajectory", header)
        f.only(("kind", "format_version", "sha256", "key", "expert", "epochs", "param_names"))
        if f.dict("key") != self.key or f.int("expert", 0) != expert:
            raise SummaryFormatError(f"{p} holds expert {header.get('expert')} of another configuration "
                                     f"({header.get('key')}); delete it or use another cache_dir.")
        if f.int("epochs", 1) != self.epochs:
            raise f.fail("epochs", f"{self.epochs} (the epochs of this buffer)", header["epochs"])
        names = f.raw("param_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or sorted(names) != sorted(tensors):
            raise SummaryFormatError(f"{p}: its tensors do not match its header; delete it to retrain.")
        short = [k for k, v in tensors.items() if v.ndim < 1 or v.shape[0] != self.epochs + 1]
        if short:
            raise SummaryFormatError(f"{p}: parameters {short[:3]} do not hold {self.epochs + 1} snapshots; the "
                                     "file is damaged: delete it to retrain.")
        bad = [k for k, v in tensors.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
        if bad:
            raise SummaryFormatError(f"{p}: parameters {bad[:3]} are not finite floats; the file is damaged: delete "
                                     "it to retrain.")

    def params(self, expert: int, epoch: int) -> Params:
        """Parameters of ``expert`` after ``epoch`` epochs (0 = initialisation), float32 on ``device``."""
        if not 0 <= epoch <= self.epochs:
            raise ConfigError(f"Epoch {epoch} out of range: experts were trained for {self.epochs} epochs.")
        return {k: v[epoch].to(self.device, torch.float32) for k, v in self.load(expert).items()}

    def sample(self, g: torch.Generator, expert_epochs: int = 2, max_start_epoch: int = 20) -> tuple[Params, Params]:
        """``(start, target)``: a random expert's parameters at a random epoch ``s`` and at ``s + expert_epochs``."""
        if expert_epochs < 1 or max_start_epoch < 1 or max_start_epoch - 1 + expert_epochs > self.epochs:
            raise ConfigError(
                f"max_start_epoch ({max_start_epoch}) - 1 + expert_epochs ({expert_epochs}) must lie in [1, "
                f"{self.epochs}], the epochs the experts were trained for: lower them, or train longer experts "
                "(expert_train_epochs).")
        i = int(torch.randint(self.num_experts, (1,), generator=g))
        s = int(torch.randint(max_start_epoch, (1,), generator=g))
        return self.params(i, s), self.params(i, s + expert_epochs)


def get_or_train_experts(real: RealData, model: str = "convnet", *, config: ExpertConfig | None = None,
                         seed: int = 0, cache_dir: str | os.PathLike | None = None,
                         device: torch.device | str = "cpu", eager: bool = True,
                         progress: bool = True) -> ExpertBuffer:
    """The :class:`ExpertBuffer` of ``(real, model, config, seed)``, training the experts not yet on disk.

    ``eager=True`` trains every missing expert now (one tqdm bar over experts); ``eager=False`` trains each the
    first time it is loaded. Files already on disk are reused, never overwritten.
    """
    config = config or ExpertConfig()
    key = trajectory_key(real, model, config, seed)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = folder / f"{real.name}-{model}-{_key_hash(key)}"

    def trainer(i: int) -> Params:
        """Train expert ``i`` (seeded by ``seed`` and ``i``)."""
        return train_expert(real, model, config, seed, i, device=device, progress=progress)

    buf = ExpertBuffer(folder, key, config.num_experts, config.epochs, trainer, device)
    todo = buf.missing() if eager else []
    if todo:
        it = todo
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(todo, desc=f"training {len(todo)} experts")
        for i in it:
            buf.save(i, trainer(i))
    return buf
