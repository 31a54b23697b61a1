"""The soft-label evaluation protocol of the teacher-based methods (SRe2L, RDED; FKD-style relabelling).

``evaluate(summary, protocol="softlabel")`` trains fresh students on the summary where every augmented minibatch
is relabelled by the teacher: the student matches the teacher's (temperature-softened) class distribution on
exactly the crop/CutMix it sees (Shen & Xing 2022, FKD; SRe2L, Yin et al. 2023; RDED, Sun et al. 2024). The
teacher is the one the summary names (``meta["teacher"]``: path and SHA-256), or one passed as ``teacher=``
(a path or a :class:`~distill_apps.teachers.Teacher`) for summaries made without one (random subsets, DM, ...).
A file whose hash differs from the one the summary names is refused. A summary without any teacher but with
fixed soft labels (``label_kind="logits"``) trains on those fixed labels instead (crops, no CutMix).

Student schedule (the papers' post-training, as in RDED's and SRe2L's small-dataset code): AdamW, lr 1e-3,
weight decay 0.01, cosine decay to 0, 300 epochs, batch ``batch_size`` (default 256, DD-Ranking's
``syn_batch_size``; capped at the summary size); augmentation: random-resized crop (area ``crop_scale``), a
horizontal flip where the dataset is flip-invariant, then CutMix (beta 1) of the batch; soft cross-entropy at
``temperature`` (equal to the KL divergence up to a constant). Every result states the protocol and schedule.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from .crops import cutmix, resized_crops
from .data import RealData
from .errors import ConfigError, DataError, SummaryFormatError
from .evaluate import EvalResult, register_protocol
from .fit_summary import fresh_model, run_range, score, train_on_summary
from .runtime import generator
from .summary import SyntheticSet
from .teachers import Teacher, load_teacher

AUGMENTS = ("crop_cutmix", "crop", "cutmix", "dsa", "none")
DEFAULTS = {"epochs": 300, "lr": 1e-3, "weight_decay": 0.01, "optimizer": "adamw", "schedule": "cosine",
            "temperature": 4.0, "crop_scale": (0.5, 1.0), "cutmix_beta": 1.0}


def teacher_for(summary: SyntheticSet, real: RealData, teacher: str | Teacher | None = None,
                device: torch.device | str = "cpu") -> Teacher | None:
    """The teacher that relabels ``summary``'s batches: ``teacher`` if given, else the one the summary names;
    checked against the summary's recorded hash and against ``real``. None when neither exists."""
    ref = summary.meta.get("teacher") or None
    want = ref.get("sha256") if isinstance(ref, dict) else None
    if isinstance(teacher, Teacher):
        if want and teacher.sha256 != want:
            raise SummaryFormatError(
                f"The teacher given (hash {teacher.sha256[:16]}...) is not the one this summary was made with "
                f"({want[:16]}...): pass the summary's own teacher, or evaluate a summary made with this one.")
        teacher.check_compatible(real)
        return teacher.to(device)
    if teacher is not None:
        return load_teacher(teacher, real, device=device, expect_sha256=want)
    if not ref:
        return None
    path = ref.get("path")
    try:
        from .trusted_paths import resolve_trusted

        return load_teacher(resolve_trusted(path, "teacher"), real, device=device, expect_sha256=want)
    except SummaryFormatError as exc:
        if path and not __import__("os").path.isfile(path):
            raise SummaryFormatError(
                f"The summary's teacher {path} is not on this machine. Pass it with --teacher PATH (the file "
                f"with hash {str(want)[:16]}...), or retrain it with `distill-apps teacher --dataset "
                f"{ref.get('dataset')} --model {ref.get('model')} --seed {ref.get('seed')} --epochs "
                f"{ref.get('epochs')}`.") from exc
        raise


def student_augment(name: str, flip: bool, crop_scale: tuple[float, float], cutmix_beta: float,
                    image_shape: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """The per-minibatch augmentation of the students (see the module docstring)."""
    if name == "none":
        return None
    if name == "dsa":
        from .augment import DSA

        dsa = DSA.for_dataset(flip)
        return lambda xb, g: dsa(xb, g)
    crop = name in ("crop", "crop_cutmix")
    mix = name in ("cutmix", "crop_cutmix")

    def aug(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Augment one student batch: random resized crops (and flips), then CutMix."""
        if crop:
            xb = resized_crops(xb, g, scale=crop_scale, flip=flip)
        if mix:
            xb = cutmix(xb, g, cutmix_beta)
        return xb

    return aug


@register_protocol("softlabel")
def softlabel_protocol(summary: SyntheticSet, real: RealData, *, model: str, runs: int, epochs: int | None,
                       lr: float | None, batch_size: int, augment: str | None, seed: int, device: torch.device,
                       progress: bool = False, amp: bool = True, teacher: str | Teacher | None = None,
                       temperature: float | None = None, weight_decay: float | None = None,
                       crop_scale: tuple[float, float] | None = None, cutmix_beta: float | None = None,
                       on_student: Callable[[torch.nn.Module, int], Any] | None = None) -> EvalResult:
    """Train ``runs`` students on ``summary`` relabelled batch by batch by the teacher; test on the real test
    split (mean +- std). See the module docstring for the schedule and the teacher checks."""
    t0 = time.perf_counter()
    m = summary.materialize()
    t = teacher_for(summary, real, teacher, device)
    fixed = t is None
    if fixed and (m.soft is None or m.label_kind != "logits"):
        raise DataError(
            "The softlabel protocol needs a teacher to relabel the batches, and this summary names none and holds "
            "no soft labels: pass teacher=PATH (evaluate --teacher PATH; make one with `distill-apps teacher "
            f"--dataset {real.name}`), or use protocol='train'.")
    aug_name = "none" if augment is None else str(augment)
    if aug_name == "auto":
        aug_name = "crop" if fixed else "crop_cutmix"
    if aug_name not in AUGMENTS:
        raise ConfigError(f"The softlabel protocol's augment must be auto or one of {', '.join(AUGMENTS)}; got "
                          f"{augment!r}.")
    if fixed and "cutmix" in aug_name:
        raise ConfigError("CutMix needs the teacher to relabel the mixed images; this summary has fixed soft "
                          "labels only: use augment='crop' or 'none', or pass teacher=PATH.")
    epochs = DEFAULTS["epochs"] if epochs is None else epochs
    lr = DEFAULTS["lr"] if lr is None else lr
    wd = DEFAULTS["weight_decay"] if weight_decay is None else weight_decay
    temp = DEFAULTS["temperature"] if temperature is None else float(temperature)
    scale = tuple(crop_scale) if crop_scale is not None else DEFAULTS["crop_scale"]
    beta = DEFAULTS["cutmix_beta"] if cutmix_beta is None else cutmix_beta
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1; got {scale}.")
    if temp <= 0:
        raise ConfigError(f"temperature must be > 0; got {temp}.")
    aug = student_augment(aug_name, real.flip_invariant, scale, beta, real.image_shape)
    data = (m.x.to(device), m.y.to(device) if not fixed else m.soft.to(device), "logits")
    target_fn = None if fixed else (lambda xb: t.logits(xb))
    accs: list[float] = []
    for r in run_range(runs, f"softlabel {model}", progress):
        g = generator("evaluate-softlabel", seed, r)
        net = fresh_model(model, real, g, device)
        train_on_summary(m, net, epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adamw", weight_decay=wd,
                         schedule="cosine", augment=aug, target_fn=target_fn, temperature=temp, training_data=data,
                         generator=g, amp=amp, progress=progress)
        accs.append(score(net, real))
        if on_student is not None:
            on_student(net, r)
    extra = {"labels": "fixed soft labels" if fixed else "teacher relabels every augmented batch",
             "teacher": None if fixed else t.reference(), "optimizer": "adamw", "weight_decay": wd,
             "schedule": "cosine to 0", "temperature": temp, "batch_size": min(batch_size, len(m.y)),
             "crop_scale": list(scale), "cutmix_beta": beta if "cutmix" in aug_name else None}
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, runs, model, real.name, "softlabel",
                      epochs, aug_name, lr, time.perf_counter() - t0, extra)
