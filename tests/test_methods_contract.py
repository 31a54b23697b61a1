"""One contract test over every registered method, through the CLI (in-process, ``distill_apps.cli.main``): a few
steps on the method's smallest registered dataset, save, load as its summary class, evaluate (``--json``), and a
checkpointed run resumed to the same step reproduces the straight run bit for bit. Bad inputs: a dataset of
another modality, an unknown option, a summary evaluated on data of another modality."""
import json
import math

import pytest
import torch

import distill_apps as da
from distill_apps.cli import main
from distill_apps.data import DATASETS
from distill_apps.engine import METHODS
from distill_apps.modality import MODALITIES
from distill_apps.summaries import SUMMARY_KINDS, Summary, load_summary

_TRAJ = {"num_experts": 2, "expert_train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 4}
# Smaller inner budgets so one contract run stays in seconds; the defining mechanisms are tested per family.
SMOKE = {"itgan": {"gan_steps": 20, "invert_steps": 10}, "mtt": _TRAJ, "tesla": _TRAJ, "haba": _TRAJ,
         "linba": {"unroll_steps": 5}, "idc": {"outer_loop": 2}, "idc-i": {"outer_loop": 2},
         "dp-dm": {"releases": 4}, "dp-dc": {"releases": 4}, "dd": {"inner_steps": 3, "inner_epochs": 1},
         "frepo": {"pool_size": 2}, "rfad": {"n_models": 2},
         "sre2l": {"teacher_model": "convnet-d2-w16-bn", "teacher_epochs": 1},
         "rded": {"teacher_model": "convnet-d2-w16-bn", "teacher_epochs": 1, "mipc": 20}}
_GRAPH = {"outer_loop": 1, "inner_loop": 1, "hidden": 16, "pge_hidden": 8}
SMOKE.update({"gcond": _GRAPH, "gcond-x": _GRAPH, "doscond": {"hidden": 16, "pge_hidden": 8},
              "gcdm": {"hidden": 16, "pge_hidden": 8}, "doscond-gc": {"batch_real": 8, "hidden": 16},
              "distill_cf": {"gamma": 5, "batch_users": 64},
              "text": {"inner_steps": 2, "batch_real": 32, "channels": 4}})
# per modality: the smallest registered dataset (tu: a TU-format folder the tu_root fixture writes), the budget and
# extra CLI arguments
SMALLEST = {"image": "digits", "graph": "cora", "recsys": "ml-100k", "text": "sst2", "graph-classification": None}
IPC = {"image": 1, "graph": 1, "recsys": 3, "text": 1, "graph-classification": 1}
EXTRA = {"image": ["--model", "convnet-d2-w16"]}


def _dataset(modality: str, tu_root, data_root) -> str:
    if modality == "graph-classification":
        return f"tu:{tu_root / 'tudataset' / 'TOYRINGSTAR'}"
    name = SMALLEST[modality]
    if not da.data.dataset_present(name, data_root):
        pytest.skip(f"{name} is not in the data root")
    return name


def _tensors(s: Summary) -> dict[str, torch.Tensor]:
    if isinstance(s, da.SyntheticSet):
        s = s.materialize()
    out = {k: v for k, v in vars(s).items() if torch.is_tensor(v)}
    out.update({f"param/{k}": v for k, v in getattr(s, "params", {}).items()})
    if getattr(s, "lr", None) is not None:  # a learned step size is part of the summary
        out["lr"] = torch.tensor(s.lr)
    return out


def _cli(capsys, *args) -> dict:
    code = main(list(args))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return json.loads(cap.out)


@pytest.mark.parametrize("method", da.list_methods())
def test_contract(method, tmp_path, capsys, tu_root, data_root):
    cls = METHODS.get(method)
    dataset = _dataset(cls.modality, tu_root, data_root)
    sets = [f"--set={k}={v}" for k, v in SMOKE.get(method, {}).items()]
    base = ["distill", "--method", method, "--dataset", dataset, "--ipc", str(IPC[cls.modality]), "--seed", "3",
            "--no-eval", "--json", *EXTRA.get(cls.modality, []), *sets]
    straight = tmp_path / "straight.safetensors"
    res = _cli(capsys, *base, "--steps", "2", "--out", str(straight))
    assert res["path"] == str(straight) and res["steps"] == 2
    s = load_summary(straight)
    assert isinstance(s, SUMMARY_KINDS.get(s.kind)) and s.modality == cls.modality
    assert s.meta["method"] == method and s.meta["dataset"] == res["dataset"] and s.meta["ipc"] == IPC[cls.modality]
    assert all(torch.isfinite(t.float()).all() for t in _tensors(s).values())
    if hasattr(s, "y"):
        m = s.materialize() if isinstance(s, da.SyntheticSet) else s
        assert set(m.y.tolist()) == set(range(s.num_classes if hasattr(s, "num_classes") else s.soft.shape[1])), \
            "every class is represented"
    if isinstance(s, da.SyntheticSet):
        assert s.materialize().x.shape[1:] == da.load_dataset("digits").image_shape
    d = s.describe()
    assert (d["kind"], d["modality"], d["method"]) == (s.kind, cls.modality, method)

    # resume: one checkpointed step, then resumed to step 2, equals the straight run bit for bit
    part = tmp_path / "part.safetensors"
    _cli(capsys, *base, "--steps", "1", "--checkpoint-every", "1", "--out", str(part))
    assert part.with_suffix(".ckpt").exists()
    _cli(capsys, *base, "--steps", "2", "--checkpoint-every", "1", "--resume", "--out", str(part))
    resumed, ref = _tensors(load_summary(part)), _tensors(s)
    assert resumed.keys() == ref.keys() and all(torch.equal(resumed[k], ref[k]) for k in ref), \
        "same seed, same summary: resuming reproduces the uninterrupted run"

    ev = _cli(capsys, "evaluate", str(straight), "--json", "--runs", "1", "--epochs", "2", *EXTRA.get(cls.modality, []))
    assert ev["summary"]["method"] == method and ev["dataset"] == s.meta["dataset"] and ev["protocol"]
    assert ev["runs"] == 1 and math.isfinite(ev["accuracy_mean"]) and 0 <= ev["accuracy_mean"] <= 1


def test_registry_metadata_complete():
    for name in da.list_methods():
        cls = METHODS.get(name)
        assert cls.family and cls.paper, name
        cfg = cls.Config()
        assert cfg.steps >= 0 and cfg.quick_steps >= 0
        modality = MODALITIES.get(cls.modality)  # every method's modality is registered, with a default dataset
        assert DATASETS.get(modality.default_dataset).modality == cls.modality and modality.ipc, name


@pytest.mark.parametrize("method,dataset,takes", [
    ("gcond", "digits", "Graph datasets: citeseer, cora"),
    ("doscond-gc", "cora", "Graph-classification datasets: dd, mutag, nci1, proteins, tu"),
    ("distill_cf", "sst2", "Recsys datasets: ml-100k"),
    ("text", "ml-100k", "Text datasets: sst2"),
    ("dm", "cora", "Image datasets: "),
])
def test_method_on_another_modality_names_the_datasets_it_takes(method, dataset, takes, capsys):
    assert main(["distill", "--method", method, "--dataset", dataset, "--steps", "1", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert takes in err and f"{dataset!r} is a" in err and "Traceback" not in err
    with pytest.raises(da.DistillError, match=takes):  # the API says the same, before loading anything
        da.distill(method, dataset, 1, steps=1, progress=False)


@pytest.mark.parametrize("method", ["gcond", "doscond-gc", "distill_cf", "text"])
def test_unknown_option_is_refused(method, capsys, tu_root, data_root):
    dataset = _dataset(METHODS.get(method).modality, tu_root, data_root)
    assert main(["distill", "--method", method, "--dataset", dataset, "--set", "bogus=1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Unknown option(s) ['bogus']" in err and "Known options" in err and "Traceback" not in err


def _summaries(tu_root, data_root) -> dict[str, Summary]:
    """One cheap summary of every kind (random real data), for the load/evaluate dispatch tests."""
    from distill_apps.modalities import graph as G, graph_classification as GC, recsys as R, text as T

    out = {"image": da.distill("random", "digits", 1, progress=False)}
    if da.data.dataset_present("cora", data_root):
        out["graph"] = G.random_subgraph(da.load_dataset("cora"), per_class=[1] * 7)
    if da.data.dataset_present("ml-100k", data_root):
        out["recsys"] = R.random_users(da.load_dataset("ml-100k"), 3)
    if da.data.dataset_present("sst2", data_root):
        out["text"] = T.random_sentences(da.load_dataset("sst2"), 1)
    out["graph-classification"] = GC.random_graphs(da.load_dataset(_dataset("graph-classification", tu_root, None)), 1)
    return out


def test_every_kind_loads_as_its_class_and_refuses_data_of_another_modality(tmp_path, capsys, tu_root, data_root):
    summaries = _summaries(tu_root, data_root)
    for modality, s in summaries.items():
        path = s.save(tmp_path / f"{modality}.safetensors")
        back = load_summary(path)
        assert type(back) is type(s) and back.modality == modality and back.describe() == s.describe()
        other = "cora" if modality != "graph" else "digits"
        assert main(["evaluate", str(path), "--dataset", other, "--runs", "1", "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"works on {modality} data, but {other!r} is a" in err and "Traceback" not in err
        with pytest.raises(da.DistillError, match=f"works on {modality} data"):
            da.evaluate(back, other, runs=1, epochs=1)
    ckpt = tmp_path / "run.ckpt"
    da.distill("dm", "digits", 1, steps=1, model="convnet-d2-w16", checkpoint=ckpt, checkpoint_every=1, progress=False)
    assert main(["evaluate", str(ckpt)]) == 2
    assert "holds a distill-apps 'checkpoint', not a summary" in capsys.readouterr().err
