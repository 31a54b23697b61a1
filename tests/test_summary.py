import json
import struct

import pytest
import torch
from hypothesis import given, settings, strategies as st

from distill_apps import SyntheticSet
from distill_apps.errors import DataError, SummaryFormatError
from distill_apps.summary import FORMAT_VERSION


def _summary(n_per=2, k=3, soft=False, lr=None):
    x = torch.randn(n_per * k, 1, 4, 4)
    y = torch.arange(k).repeat_interleave(n_per)
    return SyntheticSet(x=x, y=y, num_classes=k, image_shape=(1, 4, 4), mean=(0.5,), std=(0.2,),
                        soft=torch.randn(n_per * k, k) if soft else None, label_kind="logits" if soft else "hard",
                        lr=lr, meta={"method": "dm", "dataset": "toy", "ipc": n_per})


def test_round_trip(tmp_path):
    s = _summary(soft=True, lr=0.03)
    p = s.save(tmp_path / "s.safetensors")
    t = SyntheticSet.load(p)
    assert torch.equal(t.x, s.x) and torch.equal(t.y, s.y) and torch.equal(t.soft, s.soft)
    assert t.lr == 0.03 and t.meta["method"] == "dm" and t.label_kind == "logits"
    ds = t.as_dataset()
    assert len(ds) == 6 and ds[0][1].shape == (3,)
    png = t.image_grid(tmp_path / "g.png")
    assert png.stat().st_size > 0


def test_bit_flip_truncation_and_foreign_files(tmp_path):
    p = _summary().save(tmp_path / "s.safetensors")
    raw = bytearray(p.read_bytes())
    flipped = tmp_path / "flip.safetensors"
    raw2 = bytearray(raw)
    raw2[-5] ^= 0x10  # a bit in the tensor data
    flipped.write_bytes(bytes(raw2))
    with pytest.raises(SummaryFormatError, match="checksum"):
        SyntheticSet.load(flipped)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(SummaryFormatError, match="corrupt or truncated"):
        SyntheticSet.load(trunc)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(SummaryFormatError, match="not a distill-apps"):
        SyntheticSet.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(SummaryFormatError):
        SyntheticSet.load(tmp_path / "junk.safetensors")
    with pytest.raises(SummaryFormatError, match="No such file"):
        SyntheticSet.load(tmp_path / "absent.safetensors")


def _rewrite_header(path, fn):
    """Edit the JSON header in place as a newer writer would (with a matching header digest)."""
    from distill_apps import safe_io

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    inner = json.loads(header["__metadata__"]["distill_apps"])
    fn(inner)
    header["__metadata__"]["distill_apps"] = json.dumps(inner)
    header["__metadata__"][safe_io.DIGEST_KEY] = safe_io.header_digest(header["__metadata__"]["distill_apps"])
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])


def test_newer_format_version_refused_with_version(tmp_path):
    p = _summary().save(tmp_path / "s.safetensors")
    _rewrite_header(p, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(SummaryFormatError, match=f"version {FORMAT_VERSION + 1}"):
        SyntheticSet.load(p)


def test_wrong_shapes_labels_and_nan_refused():
    with pytest.raises(DataError, match="x must be"):
        SyntheticSet(x=torch.zeros(3, 1, 4, 5), y=torch.zeros(3, dtype=torch.long), num_classes=2, image_shape=(1, 4, 4))
    with pytest.raises(DataError, match="labels must lie"):
        SyntheticSet(x=torch.zeros(2, 1, 4, 4), y=torch.tensor([0, 5]), num_classes=2, image_shape=(1, 4, 4))
    with pytest.raises(DataError, match="int64"):
        SyntheticSet(x=torch.zeros(2, 1, 4, 4), y=torch.tensor([0.0, 1.0]), num_classes=2, image_shape=(1, 4, 4))
    with pytest.raises(DataError, match="NaN"):
        SyntheticSet(x=torch.full((2, 1, 4, 4), float("nan")), y=torch.tensor([0, 1]), num_classes=2,
                     image_shape=(1, 4, 4))


@settings(max_examples=25, deadline=None)
@given(n_per=st.integers(1, 4), k=st.integers(1, 5), c=st.sampled_from([1, 3]), hw=st.integers(1, 6),
       soft=st.booleans(), lr=st.one_of(st.none(), st.floats(1e-4, 10)),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_property_save_load(tmp_path_factory, n_per, k, c, hw, soft, lr, dtype):
    g = torch.Generator().manual_seed(n_per * 100 + k)
    x = (torch.randn(n_per * k, c, hw, hw, generator=g) * 3).to(dtype)
    s = SyntheticSet(x=x, y=torch.arange(k).repeat_interleave(n_per), num_classes=k, image_shape=(c, hw, hw),
                     soft=torch.randn(n_per * k, k, generator=g) if soft else None,
                     label_kind="logits" if soft else "hard", lr=lr, meta={"k": k, "nested": {"a": [1, 2]}})
    p = s.save(tmp_path_factory.mktemp("p") / "s.safetensors")
    t = SyntheticSet.load(p)
    assert torch.equal(t.x, x.float()) and torch.equal(t.y, s.y)
    assert t.meta == s.meta and t.lr == lr and t.image_shape == (c, hw, hw)
    assert (t.soft is None) == (not soft)
