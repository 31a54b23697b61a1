"""What the teacher-based methods (``sre2l``, ``rded``) share: the teacher options of their configs, getting the
teacher (a file, or the cached teacher of the dataset), and exporting the summary relabelled by the teacher.

The summary keeps the teacher's logits on the synthetic images as fixed soft labels (``label_kind="logits"``,
used by ``protocol="train"``) and names the teacher by path and SHA-256 in ``meta["teacher"]`` so that
``protocol="softlabel"`` can relabel every augmented batch with the very same network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig
from ..engine import Distiller, DistillState
from ..summary import SyntheticSet
from ..teachers import Teacher, resolve_teacher
from .. import softlabel as _softlabel  # noqa: F401  (registers the "softlabel" protocol)


@dataclass
class TeacherOptions(MethodConfig):
    """Teacher fields of a method config: a file (``teacher``), or the cached teacher of ``teacher_model`` trained
    for ``teacher_epochs`` with ``teacher_seed`` (trained on first use)."""

    teacher: str = ""
    teacher_model: str = "convnet-bn"
    teacher_epochs: int = 2
    teacher_seed: int = 0


class TeacherMethod(Distiller):
    """Base of the methods that read a teacher; ``self.teacher`` is set by :meth:`load_teacher`."""

    family = "teacher"
    teacher: Teacher

    def load_teacher(self) -> Teacher:
        """The configured teacher (a file, or the cached teacher of the dataset, trained on first use)."""
        cfg = self.cfg
        t = resolve_teacher(self.real, path=cfg.teacher or None, model=cfg.teacher_model,
                            epochs=cfg.teacher_epochs, seed=cfg.teacher_seed, device=self.device,
                            progress=self.rank == 0)
        self.teacher = t
        return t

    def relabelled(self, state: DistillState, x: torch.Tensor, y: torch.Tensor, **meta) -> SyntheticSet:
        """The summary of images ``x`` (class ids ``y``) with the teacher's logits as fixed soft labels and the
        teacher named by path and hash."""
        t = self.teacher
        soft = t.logits(x.detach())
        info = {"teacher": t.reference(), "teacher_seconds": 0.0 if t.cached else t.train_seconds,
                "teacher_train_seconds": t.train_seconds, "teacher_cached": t.cached,
                "eval_protocol": "softlabel", **meta}
        return self.synthetic(state, x, y, soft=soft.detach().float().cpu().clone(), label_kind="logits",
                              meta=info)
