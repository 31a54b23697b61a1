"""RDED: Realistic, Diverse and Efficient Dataset Distillation (Sun, Shi, Wang, Hou & Tang, CVPR 2024,
"On the Diversity and Realism of Distilled Dataset: An Efficient Dataset Distillation Paradigm").

No optimisation: for every class, ``mipc`` real images are drawn and ``num_crop`` random-resized crops (square,
side ``H / factor``) are cut from each. The teacher scores every crop (zero-padded to the input size) by the
cross-entropy of the true class, i.e. ``-log`` of its confidence; each image keeps its best crop, and the
``ipc * factor**2`` most confident crops of the class are stitched ``factor x factor`` into ``ipc`` synthetic
images (crop ``k * ipc + i`` fills cell ``k`` of image ``i``, row-major). The teacher's logits on the stitched
images are the soft labels; ``protocol="softlabel"`` relabels every augmented batch.

``factor=0`` follows the paper's settings: 1 (no stitching) for inputs under 128 px (its CIFAR and
Tiny-ImageNet runs), 2 (2x2) from 128 px (ImageNet subsets). ``meta["cells"]`` records, for every synthetic image,
the real image, box and score of each cell (``[train_index, top, left, height, width, cross_entropy]``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..crops import crop_box, resize, sample_boxes
from ..engine import DistillState, register_method
from ..errors import ConfigError
from .teacher_based import TeacherMethod, TeacherOptions


@dataclass
class RDEDConfig(TeacherOptions):
    """Options of RDED (Sun et al., CVPR 2024): the teacher, the stitching factor and crop sampling."""
    steps: int = 0  # selection and stitching happen once, at init
    quick_steps: int = 0
    factor: int = 0  # cells per side; 0 = the paper's choice for this image size
    num_crop: int = 5  # candidate crops per real image (paper: 5)
    mipc: int = 300  # real images drawn per class (paper: 300)
    crop_min_scale: float = 0.08  # RandomResizedCrop area range (torchvision's default, as the paper)
    crop_max_scale: float = 1.0
    score_batch: int = 1024


def paper_factor(image_shape: tuple[int, ...]) -> int:
    """RDED's factor: 1 below 128 px (CIFAR-10/100, Tiny-ImageNet scripts), 2 from 128 px (ImageNet subsets)."""
    return 1 if min(image_shape[1:]) < 128 else 2


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(N, C, h, w)`` to ``size``, centred (RDED scores a small crop on an otherwise empty input)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def stitch(cells: torch.Tensor, factor: int, n: int, size: tuple[int, int]) -> torch.Tensor:
    """``n`` images of ``size`` from ``factor**2 * n`` cells: cell ``k * n + i`` goes to position ``k``
    (row-major) of image ``i``; cells are resized to their slot (sides split as evenly as possible)."""
    h, w = size
    rows = [h // factor + (1 if i < h % factor else 0) for i in range(factor)]
    cols = [w // factor + (1 if j < w % factor else 0) for j in range(factor)]
    out = torch.zeros(n, cells.shape[1], h, w, dtype=cells.dtype, device=cells.device)
    k, top = 0, 0
    for rh in rows:
        left = 0
        for cw in cols:
            out[:, :, top:top + rh, left:left + cw] = resize(cells[k * n:(k + 1) * n], (rh, cw))
            left += cw
            k += 1
        top += rh
    return out


@register_method("rded")
class RDED(TeacherMethod):
    """RDED (Sun et al., CVPR 2024): the teacher's most confident real crops, stitched and relabelled."""
    paper = "Sun et al., CVPR 2024, On the Diversity and Realism of Distilled Dataset (RDED)"
    Config = RDEDConfig

    def init(self, g: torch.Generator) -> DistillState:
        """Select and stitch every class's crops once (no optimisation)."""
        cfg, r = self.cfg, self.real
        f = cfg.factor or paper_factor(r.image_shape)
        if f < 1 or cfg.num_crop < 1 or cfg.mipc < 1:
            raise ConfigError(f"rded needs factor >= 0, num_crop >= 1 and mipc >= 1; got {cfg.factor}, "
                              f"{cfg.num_crop}, {cfg.mipc}.")
        h, w = r.image_shape[1:]
        if h // f < 1 or w // f < 1:
            raise ConfigError(f"rded: factor {f} leaves no pixel per cell of a {h}x{w} image; lower factor.")
        if not 0 < cfg.crop_min_scale <= cfg.crop_max_scale <= 1:
            raise ConfigError("rded: need 0 < crop_min_scale <= crop_max_scale <= 1; got "
                              f"{cfg.crop_min_scale}, {cfg.crop_max_scale}.")
        self.load_teacher()
        cell = (h // f, w // f)
        need = self.ipc * f * f
        xs, cells = [], []
        for c in range(r.num_classes):  # every rank draws every class, so all ranks agree on the summary
            ix = r.sample(c, max(cfg.mipc, need), g)
            x_c, meta_c = self._select(ix, c, need, cell, g)
            xs.append(stitch(x_c, f, self.ipc, (h, w)))
            cells += [[meta_c[k * self.ipc + i] for k in range(f * f)] for i in range(self.ipc)]
        x = torch.cat(xs).to(self.device)
        y = torch.arange(r.num_classes, device=self.device).repeat_interleave(self.ipc)
        return DistillState(buffers={"x": x, "y": y}, info={"cells": cells, "factor": f})

    def _select(self, ix: torch.Tensor, c: int, need: int, cell: tuple[int, int], g: torch.Generator):
        """The ``need`` most confident crops of class ``c`` from the images ``ix`` (best of ``num_crop`` each)."""
        cfg, r = self.cfg, self.real
        m = cfg.num_crop
        boxes = sample_boxes(len(ix) * m, r.image_shape[1:], g, (cfg.crop_min_scale, cfg.crop_max_scale), (1.0, 1.0))
        src = r.x_train[ix.to(r.x_train.device)].cpu()
        crops = torch.stack([resize(crop_box(src[j // m], boxes[j]).unsqueeze(0), cell)[0]
                             for j in range(len(boxes))])
        full = pad_to(crops, r.image_shape[1:])
        logits = self.teacher.logits(full, cfg.score_batch).float().cpu()
        ce = F.cross_entropy(logits, torch.full((len(full),), c), reduction="none").view(len(ix), m)
        best_score, best = ce.min(1)
        order = torch.argsort(best_score)[:need]
        chosen = order * m + best[order]
        meta = [[int(ix[j // m]), *(int(v) for v in boxes[j]), float(ce.view(-1)[j])] for j in chosen.tolist()]
        return crops[chosen], meta

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Nothing to optimise: the images are chosen at ``init``."""
        return {}

    def export(self, state: DistillState):
        """The stitched images with the teacher's soft labels and every cell's provenance."""
        return self.relabelled(state, state.buffers["x"], state.buffers["y"],
                               cells=state.info["cells"], factor=state.info["factor"])
