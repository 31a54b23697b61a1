"""DistilledBuffer on Avalanche 0.6: budget in stored floats, a summary per seen class, ReplayPlugin draws from it,
real strategies (Naive + ReplayPlugin, ER-ACE) end to end, soft labels / learned lr, and bad inputs."""
import warnings

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin  # noqa: E402
from avalanche.training.supervised import ER_ACE, Naive  # noqa: E402

import distill_apps as da  # noqa: E402
from distill_apps.engine import METHODS, Distiller, DistillState, register_method  # noqa: E402
from distill_apps.errors import ConfigError, DataError  # noqa: E402
from distill_apps.parameterisation import draw_real  # noqa: E402
from distill_apps.integrations.avalanche import (  # noqa: E402
    DistilledBuffer, DistilledReplayPlugin, make_memory, split_digits, tensor_dataset)

NET = "convnet-d1-w16"
FAST = dict(steps=2, model=NET, device="cpu")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:No loggers specified")]


@pytest.fixture(scope="module")
def stream():
    return split_digits(5, seed=0)


class Recorder(SupervisedPlugin):
    """Records the targets (and inputs) of every training minibatch, per experience."""

    def __init__(self):
        super().__init__()
        self.batches = {}

    def before_forward(self, strategy, **kw):
        rec = self.batches.setdefault(strategy.experience.current_experience, [])
        extra = getattr(strategy, "mb_buffer_y", None)
        rec.append((strategy.mb_x.detach().cpu(), strategy.mb_y.detach().cpu(),
                    None if extra is None else extra.detach().cpu()))


def _learner(seed=0):
    return da.build_model(NET, 1, 10, 8, generator=torch.Generator().manual_seed(seed))


def test_budget_in_floats_and_a_summary_for_every_seen_class(stream):
    bm, real = stream
    for shrink in ("select", "redistill"):
        buf = DistilledBuffer(14, "dm", shrink=shrink, **FAST)  # 7, 3, 2 images per class as classes arrive
        seen = set()
        for i, exp in enumerate(bm.train_stream[:3]):
            buf.post_adapt(None, exp)
            seen |= set(exp.classes_in_this_experience)
            assert buf.stored_floats() <= buf.budget_floats() == 14 * 64
            assert set(buf.images_per_class()) == seen
            assert set(buf.images_per_class().values()) == {14 // len(seen)}
            x, y, t = buf.tensors()
            assert len(buf.buffer) == len(y) and set(y.tolist()) == seen and (t == 0).all()
            item = buf.buffer[0]
            assert len(item) == 3 and item[0].shape == (1, 8, 8)  # (x, y, task) triples
        assert buf.stored_floats() < buf.budget_floats()  # 14 // 6 = 2 per class: the remainder stays unused
    # resizing shrinks every class to the new share; stored floats follow
    buf.resize(None, 6)
    assert set(buf.images_per_class().values()) == {1} and buf.stored_floats() == 6 * 64


def test_distilled_images_differ_from_real_and_keep_their_class(stream):
    bm, real = stream
    buf = DistilledBuffer(10, "dm", steps=20, model=NET, device="cpu")
    buf.post_adapt(None, bm.train_stream[0])
    x, y, _ = buf.tensors()
    c0 = sorted(bm.train_stream[0].classes_in_this_experience)
    assert sorted(set(y.tolist())) == c0
    # DM moved the images away from their real initialisations
    dist = torch.cdist(x.flatten(1), real.x_train.flatten(1)).min(1).values
    assert (dist > 1e-3).all()


def test_replay_plugin_draws_from_the_distilled_buffer(stream):
    bm, _ = stream
    model = _learner()
    buf = DistilledBuffer(10, "dm", **FAST)
    rec = Recorder()
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                          forgetting_metrics(experience=True, stream=True), loggers=[])
    s = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
              criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, eval_mb_size=256,
              plugins=[ReplayPlugin(mem_size=10, batch_size_mem=8, storage_policy=buf), rec], evaluator=ev)
    first, second = bm.train_stream[0], bm.train_stream[1]
    s.train(first)
    mem_x, mem_y, _ = buf.tensors()
    old = set(first.classes_in_this_experience)
    assert not any(set(yb.tolist()) - old for _, yb, _ in rec.batches[0])
    s.train(second)
    res = s.eval(bm.test_stream)
    # during the second experience every minibatch carries memory rows of the first experience's classes,
    # and those rows are exactly the buffer's distilled images
    drawn = set()
    for xb, yb, _ in rec.batches[1]:
        rows = torch.isin(yb, torch.tensor(sorted(old)))
        assert rows.sum() > 0
        for xr in xb[rows]:
            gap = (mem_x - xr).flatten(1).abs().amax(1)
            assert gap.min() == 0
            drawn.add(int(gap.argmin()))
    assert drawn == set(range(len(mem_x)))  # every distilled image was replayed
    # Avalanche's metrics for the two trained experiences, and forgetting
    accs = [res[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{j:03d}"] for j in range(2)]
    assert all(0.0 <= a <= 1.0 for a in accs) and accs[1] > 0.5
    assert "StreamForgetting/eval_phase/test_stream" in res
    assert set(buf.images_per_class()) == old | set(second.classes_in_this_experience)


def test_er_ace_with_distilled_storage_policy(stream):
    bm, _ = stream
    model = _learner(1)
    rec = Recorder()
    s = ER_ACE(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), mem_size=10, batch_size_mem=4,
               train_mb_size=16, train_epochs=1, eval_mb_size=256, plugins=[rec],
               evaluator=EvaluationPlugin(loggers=[]))
    s.storage_policy = DistilledBuffer(10, "dm", **FAST)
    for exp in bm.train_stream[:2]:
        s.train(exp)
    assert len(s.storage_policy.images_per_class()) == 4
    buffer_targets = torch.cat([b for _, _, b in rec.batches[1] if b is not None])
    assert len(buffer_targets) > 0 and set(buffer_targets.tolist()) <= set(s.storage_policy.images_per_class())


class _SoftLabel(Distiller):
    """A real-image summary with soft logits and a learned lr (the shape TESLA/FRePO-style methods export)."""

    family = "test"
    paper = "test fixture"

    def init(self, g):
        x, y, _ = draw_real(self.real, self.ipc, g, self.device)
        return DistillState(buffers={"x": x, "y": y})

    def step(self, state, g):
        return {}

    def export(self, state):
        y = state.buffers["y"]
        soft = 4.0 * torch.nn.functional.one_hot(y, self.real.num_classes).float() + 0.5
        return self.synthetic(state, state.buffers["x"], y, soft=soft, label_kind="logits", lr=0.02)


class _RGBOnly(_SoftLabel):
    """A method that cannot run on grayscale images (as methods built on pretrained RGB networks)."""

    def init(self, g):
        if self.real.image_shape[0] != 3:
            raise DataError(f"this method needs RGB images; got {self.real.image_shape[0]} channel(s)")
        return super().init(g)


@pytest.fixture
def test_methods():
    """Register the two fixture methods for one test only (after collection, so the contract test skips them)."""
    names = {"_test_softlabel": _SoftLabel, "_test_rgbonly": _RGBOnly}
    for n, cls in names.items():
        register_method(n)(cls)
    yield names
    for n in names:
        METHODS._items.pop(n, None)


def test_soft_labels_and_learned_lr_are_used_at_replay(stream, test_methods):
    bm, _ = stream
    buf = DistilledBuffer(10, "_test_softlabel", steps=0, model=NET, device="cpu", num_classes=10, base_lr=0.01)
    plugin = DistilledReplayPlugin(10, buf, batch_size_mem=6)
    model = _learner(2)
    rec = Recorder()
    s = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
              criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, plugins=[plugin, rec],
              evaluator=EvaluationPlugin(loggers=[]))
    s.train(bm.train_stream[0])
    assert buf.soft_targets.shape == (10, 10) and buf.label_floats() == 100
    c0 = sorted(bm.train_stream[0].classes_in_this_experience)
    others = [c for c in range(10) if c not in c0]
    assert (buf.soft_targets[:, others] == -1e4).all()  # classes outside the experience get no probability
    assert torch.allclose(buf.replay_weights, torch.full((10,), 2.0))  # learned lr 0.02 over the learner's 0.01
    s.train(bm.train_stream[1])
    # memory rows went through the soft-label loss, not through the loader
    assert plugin.memory_rows_seen == 6 * len(rec.batches[1])
    assert not any(torch.isin(yb, torch.tensor(c0)).any() for _, yb, _ in rec.batches[1])


def test_bad_inputs(stream, test_methods):
    bm, real = stream
    with pytest.raises(ConfigError, match="positive"):
        DistilledBuffer(0, "dm")
    with pytest.raises(ConfigError, match="Unknown method"):
        DistilledBuffer(10, "no_such_method")
    # a budget smaller than the number of classes seen
    buf = DistilledBuffer(3, "dm", **FAST)
    buf.post_adapt(None, bm.train_stream[0])
    with pytest.raises(ConfigError, match="cannot hold one image for each of the 4 classes"):
        buf.post_adapt(None, bm.train_stream[1])
    # a method that cannot run on the experience's images: the error names the experience and the method
    with pytest.raises(ConfigError, match="'_test_rgbonly' could not distil experience 0.*needs RGB"):
        DistilledBuffer(10, "_test_rgbonly", **FAST).post_adapt(None, bm.train_stream[0])
    # inputs that are not images (flat vectors)
    x, y = real.x_train.flatten(1), real.y_train
    flat = class_incremental_benchmark({"train": tensor_dataset(x, y), "test": tensor_dataset(x, y)},
                                       class_order=list(range(10)), num_experiences=5)
    with pytest.raises(DataError, match=r"distils images \(N, C, H, W\)"):
        DistilledBuffer(10, "dm", **FAST).post_adapt(None, flat.train_stream[0])
    with pytest.raises(ConfigError, match="herding memory needs the learner"):
        make_memory("herding", 10)


def test_single_class_experiences():
    bm, _ = split_digits(10, seed=0)
    exp = bm.train_stream[0]
    with pytest.raises(ConfigError, match="single class"):
        DistilledBuffer(10, "dsa", **FAST).post_adapt(None, exp)
    kept = DistilledBuffer(10, "dsa", single_class="real", **FAST)
    kept.post_adapt(None, exp)
    assert kept.images_per_class() == {next(iter(exp.classes_in_this_experience)): 10}
    assert next(iter(kept.classes.values())).source == "real"
    dm = DistilledBuffer(10, "dm", **FAST)  # distribution matching is defined per class: distils as usual
    dm.post_adapt(None, exp)
    assert list(dm.images_per_class().values()) == [10] and next(iter(dm.classes.values())).source == "dm"


def test_recipe_json_smoke(tmp_path, capsys):
    from distill_apps.cli import main

    rc = main(["recipe", "continual", "--experiences", "2", "--methods", "reservoir", "dm", "--seeds", "0", "1",
               "--steps", "1", "--epochs", "1", "--model", NET, "--mem-per-class", "2", "--out", str(tmp_path),
               "--json"])
    assert rc == 0
    import json

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["memory"] for m in out["memories"]] == ["reservoir", "dm"]
    for m in out["memories"]:
        assert len(m["final_accuracy"]["per_seed"]) == 2 and 0 <= m["final_accuracy"]["mean"] <= 1
        assert "std" in m["forgetting"] and len(m["accuracy_after_experience"]["mean"]) == 2
    assert (tmp_path / "report.md").read_text().count("| dm |") == 1 and (tmp_path / "accuracy.png").stat().st_size > 0
    assert "±" in (tmp_path / "report.md").read_text()  # two seeds: mean ± std


@pytest.mark.parametrize("name", ["split_mnist", "split_fashion_mnist"])
def test_split_benchmarks_from_the_real_files(name, data_root):
    """Split-MNIST / Split-Fashion-MNIST through Avalanche's generator: 5 experiences of 2 new classes each,
    the class order drawn from the seed, and the per-class subsample honoured."""
    from distill_apps.integrations import avalanche as dav

    make = getattr(dav, name)
    bm, real = make(5, seed=0, data_root=str(data_root), train_per_class=20)
    classes = [sorted(int(c) for c in exp.classes_in_this_experience) for exp in bm.train_stream]
    assert len(classes) == 5 and all(len(c) == 2 for c in classes)
    assert sorted(c for cs in classes for c in cs) == list(range(10))
    assert [len(exp.dataset) for exp in bm.train_stream] == [40] * 5
    assert len(bm.test_stream[0].dataset) == int(sum((real.y_test == c).sum() for c in classes[0]))
    other, _ = make(5, seed=1, data_root=str(data_root), train_per_class=20)
    again, _ = make(5, seed=0, data_root=str(data_root), train_per_class=20)
    order = lambda b: [sorted(int(c) for c in e.classes_in_this_experience) for e in b.train_stream]  # noqa: E731
    assert order(again) == classes and order(other) != classes


def test_user_benchmark_of_plain_pairs_runs_past_experience_two():
    """A benchmark a user builds from plain ``(x, y)`` datasets yields pairs, not triples; the replay loader
    collates memory rows with the experience's rows, so the buffer must serve pairs too. The same script runs
    with Avalanche's own ReservoirSamplingBuffer and with DistilledBuffer, over three experiences."""
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from torch.utils.data import TensorDataset

    real = da.load_dataset("digits")

    def pairs(x, y):
        return ClassificationDataset([TensorDataset(x, y)], data_attributes=[DataAttribute(y.tolist(), "targets")])

    bm = class_incremental_benchmark({"train": pairs(real.x_train, real.y_train),
                                      "test": pairs(real.x_test, real.y_test)}, num_experiences=5)
    assert len(bm.train_stream[0].dataset[0]) == 2  # the user's items are (x, y) pairs
    for name in ("reservoir", "dm"):
        buf = ReservoirSamplingBuffer(12) if name == "reservoir" else DistilledBuffer(12, "dm", **FAST)
        model = _learner(3)
        rec = Recorder()
        s = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                  plugins=[ReplayPlugin(mem_size=12, batch_size_mem=8, storage_policy=buf), rec],
                  evaluator=EvaluationPlugin(loggers=[]))
        seen = set()
        for i, exp in enumerate(bm.train_stream[:3]):
            s.train(exp)  # experience 2 (i=1) collates memory pairs with the experience's pairs
            if i:  # every minibatch after the first experience carries memory rows of earlier classes
                assert all(torch.isin(yb, torch.tensor(sorted(seen))).any() for _, yb, _ in rec.batches[i])
            seen |= set(exp.classes_in_this_experience)
        assert len(buf.buffer[0]) == 2, name  # served in the stream's own item shape
    assert set(buf.images_per_class()) == seen and buf.item_fields == 2
    x, y, t = buf.tensors()
    assert set(y.tolist()) == seen and len(x) <= 12
