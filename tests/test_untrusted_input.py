"""Untrusted input never makes the package open other files or run code (issue 22): paths in summary metadata,
pickled Planetoid files, and shell commands built from argument lists."""
import os
import pickle
import shlex

import pytest
import torch

from distill_apps.errors import DataError, SummaryFormatError
from distill_apps.summary import SyntheticSet

ARCH = {"name": "dcgan-small", "nz": 4, "ngf": 8, "channels": 1, "image_size": [8, 8], "mean": [0.5], "std": [0.2]}


def _itgan_summary(path: str, sha: str = "0" * 64) -> SyntheticSet:
    """A summary as IT-GAN writes it, naming its generator file at ``path``."""
    return SyntheticSet(x=None, y=torch.arange(10), num_classes=10, image_shape=(1, 8, 8), mean=(0.5,), std=(0.2,),
                        params={"z": torch.zeros(10, 4)}, decoder="itgan",
                        decoder_spec={"path": path, "sha256": sha, "arch": ARCH, "num_classes": 10, "per_class": 1},
                        meta={"dataset": "digits", "method": "itgan", "ipc": 1})


def test_paths_in_summary_metadata_are_not_opened_outside_the_roots(tmp_path, monkeypatch):
    from distill_apps.methods import generative

    cache = tmp_path / "cache"
    (cache / "generators").mkdir(parents=True)
    monkeypatch.setenv("DISTILL_APPS_CACHE", str(cache))
    monkeypatch.setenv("DISTILL_APPS_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("DISTILL_APPS_TRUSTED_PATHS", raising=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for summaries")
    opened = []
    monkeypatch.setattr(generative, "file_sha256", lambda p: opened.append(p) or "f" * 64)
    link = cache / "generators" / "innocent.safetensors"
    link.symlink_to(secret)  # inside the cache root by name, outside once resolved
    for named in (str(secret), str(link), "/etc/hostname", "relative/gen.safetensors",
                  str(cache / ".." / "secret.txt")):
        s = SyntheticSet.load(_itgan_summary(named).save(tmp_path / "crafted.safetensors"))
        with pytest.raises(SummaryFormatError, match="cannot make distill-apps open|relative path"):
            s.materialize()
    assert opened == []  # never read, never hashed

    # the user may pass the folder explicitly: then the file is opened (and checked against its hash)
    monkeypatch.setenv("DISTILL_APPS_TRUSTED_PATHS", str(tmp_path))
    s = SyntheticSet.load(_itgan_summary(str(secret)).save(tmp_path / "trusted.safetensors"))
    with pytest.raises(SummaryFormatError, match="changed since the summary was made"):
        s.materialize()
    assert opened == [secret]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planetoid_files_are_read_without_running_code(tmp_path, data_root):
    from distill_apps.modalities.planetoid_raw import read_planetoid

    src = data_root / "planetoid" / "Cora" / "raw"
    if not src.is_dir():
        pytest.skip("no Planetoid Cora files under the data root")
    # the real files: the same graph torch_geometric builds with pickle.load
    from torch_geometric.io.planetoid import read_planetoid_data

    ref = read_planetoid_data(str(src), "cora")
    x, edge_index, y, train, val, test = read_planetoid(src, "cora")
    assert torch.equal(x, ref.x) and torch.equal(y, ref.y) and torch.equal(edge_index, torch.unique(ref.edge_index, dim=1))
    idx = torch.arange(len(y))
    assert torch.equal(train, idx[ref.train_mask]) and torch.equal(val, idx[ref.val_mask]) and torch.equal(test, idx[ref.test_mask])

    # a crafted file that would run a shell command when unpickled
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in src.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    (raw / "ind.cora.x").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="system.*may be crafted to run code"):
        read_planetoid(raw, "cora")
    assert not marker.exists()
    (raw / "ind.cora.graph").write_bytes(pickle.dumps({0: "not a list"}, protocol=2))
    (raw / "ind.cora.x").write_bytes((src / "ind.cora.x").read_bytes())
    with pytest.raises(DataError, match="adjacency"):
        read_planetoid(raw, "cora")


def test_nni_trial_command_is_quoted(tmp_path):
    pytest.importorskip("nni")
    from distill_apps.integrations.nni.experiment import trial_command

    work = tmp_path / "dir with space; touch pwned" / "it's"
    spec = {"python": "/usr/bin/python3", "arch": {"norm": "a'b", "depth": 2}, "seed": 3}
    argv = shlex.split(trial_command(spec, work))
    assert argv == ["/usr/bin/python3", "-m", "distill_apps.integrations.nni", "trial", str(work / "task"),
                    '{"norm": "a\'b", "depth": 2}', "3"]
