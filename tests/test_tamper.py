"""Header tampering, per file kind and per field (issue 22).

Each file's checksum covers its JSON header and its tensors, so editing any header field in place (keeping the
old checksum) is refused as damage. A forger can recompute the checksum, so every field is also validated by type
and range on load: the same edits, re-signed, are refused naming the field (never loaded, never a traceback).
"""
import json
import struct

import pytest
import torch

import distill_apps as da
from distill_apps import checkpoint as ckpt
from distill_apps import safe_io
from distill_apps.engine import make_distiller
from distill_apps.errors import CheckpointMismatchError, LegacyFileWarning, SummaryFormatError
from distill_apps.experts import ExpertBuffer
from distill_apps.methods.generative import Generator, load_generator, save_generator
from distill_apps.runtime import generator
from distill_apps.summary import SyntheticSet

MODEL = "convnet-d2-w16"


def edit_header(path, fn, resign=False, out=None):
    """Rewrite the distill-apps JSON header of ``path`` in place (``fn`` edits the dict); keep the old header
    digest unless ``resign`` (then recompute it, as a forger would)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    outer = json.loads(raw[8:8 + n])
    inner = json.loads(outer["__metadata__"][safe_io.HEADER_KEY])
    fn(inner)
    outer["__metadata__"][safe_io.HEADER_KEY] = json.dumps(inner)
    if resign:
        outer["__metadata__"][safe_io.DIGEST_KEY] = safe_io.header_digest(outer["__metadata__"][safe_io.HEADER_KEY])
    hb = json.dumps(outer).encode()
    hb += b" " * (-len(hb) % 8)
    target = out or path
    target.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    return target


def setter(key, value):
    def fn(h):
        node = h
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return fn


def _summary(tmp_path, soft=False):
    x = torch.randn(6, 1, 4, 4)
    s = SyntheticSet(x=x, y=torch.arange(3).repeat_interleave(2), num_classes=3, image_shape=(1, 4, 4),
                     mean=(0.5,), std=(0.2,), soft=torch.randn(6, 3) if soft else None,
                     label_kind="logits" if soft else "hard", lr=0.01,
                     meta={"method": "dm", "dataset": "toy", "ipc": 2, "steps": 5})
    return s.save(tmp_path / "s.safetensors")


SUMMARY_EDITS = [  # (field, bad value, what the refusal names)
    ("num_classes", "ten", "num_classes"), ("num_classes", 0, "num_classes"), ("num_classes", 2, "labels"),
    ("image_shape", "abc", "image_shape"), ("image_shape", [1, 4, 5], "x must be"), ("image_shape", [], "image_shape"),
    ("mean", ["a"], "mean"), ("mean", [0.1, 0.2], "mean/std"),
    ("std", [0.0], "std"), ("std", [-1.0], "std"),
    ("label_kind", "logits", "label_kind"), ("label_kind", "weird", "label_kind"),
    ("lr", 50, None), ("lr", -1.0, "lr"), ("lr", "fast", "lr"), ("lr", True, "lr"),
    ("decoder", "nosuch", "decoder"), ("decoder_spec", {"path": "/etc/passwd"}, "decoder_spec"),
    ("decoder_spec", [1], "decoder_spec"),
    ("meta", [1, 2], "meta"), ("meta.ipc", "abc", "ipc"), ("meta.dataset", 7, "dataset"), ("meta.steps", -3, "steps"),
    ("extra_field", 1, "unknown field"),
]


@pytest.mark.parametrize("field,bad,needle", SUMMARY_EDITS)
def test_summary_header_field_edits_are_refused(tmp_path, field, bad, needle):
    p = _summary(tmp_path)
    kept = edit_header(p, setter(field, bad), out=tmp_path / "kept.safetensors")
    with pytest.raises(SummaryFormatError, match="checksum"):  # the old checksum no longer fits
        SyntheticSet.load(kept)
    forged = edit_header(p, setter(field, bad), resign=True, out=tmp_path / "forged.safetensors")
    if needle is None:  # a plausible value: only the checksum can tell (above); a re-signed file is authentic
        assert SyntheticSet.load(forged).lr == 50
        return
    with pytest.raises(SummaryFormatError, match=needle):
        SyntheticSet.load(forged)


def test_soft_label_kind_without_soft_tensor_refused(tmp_path):
    p = _summary(tmp_path, soft=True)
    # drop the soft tensor by re-saving without it, then claim logits
    s = SyntheticSet.load(p)
    plain = SyntheticSet(x=s.x, y=s.y, num_classes=3, image_shape=(1, 4, 4), meta=s.meta).save(tmp_path / "h.safetensors")
    edit_header(plain, setter("label_kind", "logits"), resign=True)
    with pytest.raises(SummaryFormatError, match="label_kind"):
        SyntheticSet.load(plain)


def test_legacy_format_1_file_loads_with_warning_and_is_still_validated(tmp_path):
    p = _summary(tmp_path)

    def drop_digest(path):  # a file written before the header digest existed
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        outer = json.loads(raw[8:8 + n])
        del outer["__metadata__"][safe_io.DIGEST_KEY]
        inner = json.loads(outer["__metadata__"][safe_io.HEADER_KEY])
        inner.pop("container")
        outer["__metadata__"][safe_io.HEADER_KEY] = json.dumps(inner)
        hb = json.dumps(outer).encode()
        hb += b" " * (-len(hb) % 8)
        path.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])

    drop_digest(p)
    with pytest.warns(LegacyFileWarning, match="header"):
        s = SyntheticSet.load(p)
    assert s.lr == 0.01
    s.save(tmp_path / "upgraded.safetensors")  # saving again upgrades it: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyFileWarning)
        SyntheticSet.load(tmp_path / "upgraded.safetensors")
    edit_header(p, setter("num_classes", "ten"))  # legacy: no header digest, but the field is validated
    with pytest.warns(LegacyFileWarning), pytest.raises(SummaryFormatError, match="num_classes"):
        SyntheticSet.load(p)


# ---------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def dm_checkpoint(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "run.ckpt"
    da.distill("dm", digits, 1, steps=1, seed=3, model=MODEL, progress=False, checkpoint=path, checkpoint_every=1)
    assert not ckpt.previous_path(path).exists()  # one save: no fallback in these tests
    return path


def _fresh(digits):
    d = make_distiller("dm", digits, 1, device="cpu", model=MODEL, seed=3)
    return d, d.init(generator("init", d.seed))


CHECKPOINT_EDITS = [
    ("step", "abc", SummaryFormatError, "step"), ("step", -1, SummaryFormatError, "step"),
    ("info", [], SummaryFormatError, "info"), ("info.skipped", "many", SummaryFormatError, "info.skipped"),
    ("optimizers", {}, SummaryFormatError, "optimizers"),
    ("optimizers.syn.param_groups", "x", SummaryFormatError, "param_groups"),
    ("optimizers.syn.plain_state", {"0": {"momentum_buffer": "evil"}}, SummaryFormatError, "plain_state"),
    ("run.seed", 4, CheckpointMismatchError, "seed"), ("run.method", "dc", CheckpointMismatchError, "method"),
    ("run.extra", 1, CheckpointMismatchError, "unknown field"), ("surprise", 1, SummaryFormatError, "unknown field"),
]


@pytest.mark.parametrize("field,bad,err,needle", CHECKPOINT_EDITS)
def test_checkpoint_header_field_edits_are_refused(digits, dm_checkpoint, tmp_path, field, bad, err, needle):
    kept = edit_header(dm_checkpoint, setter(field, bad), out=tmp_path / "kept.ckpt")
    d, state = _fresh(digits)
    with pytest.raises(SummaryFormatError, match="checksum"):
        ckpt.load_into(kept, d, state)
    forged = edit_header(dm_checkpoint, setter(field, bad), resign=True, out=tmp_path / "forged.ckpt")
    x0 = state.params["x"].clone()
    with pytest.raises(err, match=needle):
        ckpt.load_into(forged, d, state)
    assert torch.equal(state.params["x"], x0) and state.step == 0  # nothing was copied


def test_checkpoint_with_edited_optimiser_lr_is_refused(digits, dm_checkpoint, tmp_path):
    """DM's image optimiser runs at lr 1; a checkpoint saying 1000 must not resume (not even re-signed)."""
    def lr_1000(h):
        group = h["optimizers"]["syn"]["param_groups"][0]
        assert group["lr"] == 1.0
        group["lr"] = 1000.0

    forged = edit_header(dm_checkpoint, lr_1000, resign=True, out=tmp_path / "lr.ckpt")
    with pytest.raises(CheckpointMismatchError, match="lr=1000.0"):
        da.distill("dm", digits, 1, steps=2, seed=3, model=MODEL, progress=False, checkpoint=forged,
                   checkpoint_every=1, resume=True)
    d, state = _fresh(digits)
    ckpt.load_into(dm_checkpoint, d, state)  # the untouched one resumes
    assert state.step == 1 and state.optimizers["syn"].param_groups[0]["lr"] == 1.0


def test_checkpoint_tensor_of_wrong_shape_or_nan_refused(digits, dm_checkpoint, tmp_path):
    tensors, header = safe_io.read(dm_checkpoint, ckpt.KIND, ckpt.FORMAT_VERSION)
    body = {k: v for k, v in header.items() if k not in ("kind", "format_version", "sha256")}
    for name, bad, needle in (("buf/y", torch.zeros(3, dtype=torch.long), "buf/y"),
                              ("param/x", torch.full_like(tensors["param/x"], float("nan")), "NaN"),
                              ("opt/syn/0/momentum_buffer", torch.zeros(2), "momentum_buffer")):
        p = safe_io.write(tmp_path / "t.ckpt", {**tensors, name: bad}, body, ckpt.KIND, ckpt.FORMAT_VERSION)
        d, state = _fresh(digits)
        with pytest.raises(SummaryFormatError, match=needle):
            ckpt.load_into(p, d, state)


# ---------------------------------------------------------------------- expert trajectories and generators
def _expert_file(tmp_path):
    key = {"dataset": "toy", "data": "0" * 16, "model": MODEL, "seed": 0, "train": {"epochs": 2}}
    buf = ExpertBuffer(tmp_path / "experts", key, num_experts=1, epochs=2)
    buf.save(0, {"w": torch.randn(3, 4), "b": torch.randn(3)})
    return buf


@pytest.mark.parametrize("field,bad,needle", [
    ("epochs", 5, "'epochs'"), ("epochs", "two", "'epochs'"), ("expert", 1, "another configuration"),
    ("expert", "0", "'expert'"), ("key.seed", 1, "another configuration"), ("param_names", ["w"], "do not match"),
    ("param_names", "w,b", "do not match"), ("extra", 1, "unknown field"),
])
def test_expert_header_field_edits_are_refused(tmp_path, field, bad, needle):
    buf = _expert_file(tmp_path)
    assert set(buf.load(0)) == {"w", "b"}
    path = buf.path(0)
    original = path.read_bytes()
    edit_header(path, setter(field, bad))
    with pytest.raises(SummaryFormatError, match="checksum"):
        ExpertBuffer(buf.folder, buf.key, 1, 2).load(0)
    path.write_bytes(original)
    edit_header(path, setter(field, bad), resign=True)
    with pytest.raises(SummaryFormatError, match=needle):
        ExpertBuffer(buf.folder, buf.key, 1, 2).load(0)


@pytest.mark.parametrize("field,bad,needle", [
    ("arch.nz", 10**9, "nz"), ("arch.ngf", 12, "ngf"), ("arch.channels", "one", "channels"),
    ("arch.image_size", [8], "image_size"), ("arch.std", [0.0], "std"), ("arch.mean", [0.1, 0.2], "mean"),
    ("arch", "dcgan", "arch"), ("info", 3, "info"),
])
def test_generator_header_field_edits_are_refused(tmp_path, field, bad, needle):
    arch = {"name": "dcgan-small", "nz": 4, "ngf": 8, "channels": 1, "image_size": [8, 8], "mean": [0.5],
            "std": [0.2]}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gen = Generator(4, 8, 1, (8, 8), [0.5], [0.2])
    path = save_generator(tmp_path / "g.safetensors", gen, arch, {"dataset": "toy"})
    load_generator(path)
    original = path.read_bytes()
    edit_header(path, setter(field, bad))
    with pytest.raises(SummaryFormatError, match="checksum"):
        load_generator(path)
    path.write_bytes(original)
    edit_header(path, setter(field, bad), resign=True)
    with pytest.raises(SummaryFormatError, match=needle):
        load_generator(path)
