"""Factorised summaries decode in chunks: chunked decoding equals whole decoding, per-minibatch decoding feeds
``train.fit`` the same images, and one chunk reproduces the pre-chunking decoders bit for bit."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.summary import DecodedImages
from distill_apps.train import fit

MODEL = "convnet-d1-w8"
CONFIGS = {
    "linba": {"unroll_steps": 2},
    "kfs": {"batch_real": 8},
    "haba": {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 2},
    "idc": {"outer_loop": 1},
    "itgan": {"gan_steps": 5, "invert_steps": 2},
}


@pytest.fixture(scope="module")
def summaries(digits, tmp_path_factory):
    out = {}
    for method, cfg in CONFIGS.items():
        cfg = dict(cfg)
        if method == "haba":
            cfg["expert_dir"] = str(tmp_path_factory.mktemp("experts"))
        out[method] = da.distill(method, digits, 2, steps=1, model=MODEL, progress=False, config=cfg)
    return out


@pytest.mark.parametrize("method", list(CONFIGS))
def test_chunked_decoding_equals_whole_decoding(method, summaries):
    """Chunks of 7 decoded images (crossing network/tile/code boundaries) give the whole decode's images to
    float32 rounding (measured <= 1e-6; other convolution group counts), and the same labels exactly."""
    s = summaries[method]
    whole = s.materialize(chunk=10**6)
    chunked = s.materialize(chunk=7)
    assert whole.x.shape[0] > 7 and torch.equal(whole.y, chunked.y)
    torch.testing.assert_close(chunked.x, whole.x, atol=1e-5, rtol=1e-5)
    y, soft, kind = s.decoded_labels()
    assert torch.equal(y, whole.y) and soft is None and kind == "hard" and len(s) == len(whole.y)
    src = DecodedImages(s)
    idx = torch.randperm(len(src), generator=torch.Generator().manual_seed(0))[:13]
    torch.testing.assert_close(src[idx], whole.x[idx], atol=1e-5, rtol=1e-5)


def test_one_chunk_reproduces_the_whole_decoders_bit_for_bit(summaries):
    """The default chunk holds these summaries whole, so their decoded images are the old decoders' exactly."""
    from distill_apps.methods.factorized import hallucinated_images, linba_images
    from distill_apps.methods.gradient_variants import multiformation

    s = summaries["linba"]
    assert torch.equal(s.materialize().x, linba_images(s.params["bases"], s.params["addressing"])[0])
    for m in ("haba", "kfs"):
        s = summaries[m]
        assert torch.equal(s.materialize().x, hallucinated_images(s.params, s.decoder_spec)[0])
    s = summaries["idc"]
    assert torch.equal(s.materialize().x, multiformation(s.params["x"], s.decoder_spec["factor"]))


def test_fit_trains_on_a_per_minibatch_decoding_source(summaries, digits):
    """``train.fit`` takes a DecodedImages source; the run matches training on the materialised tensor (the
    minibatches are decoded separately, so to rounding)."""
    from distill_apps.nets import build_model
    from distill_apps.runtime import generator

    s = summaries["haba"]
    m = s.materialize()
    nets = []
    for x in (m.x, DecodedImages(s)):
        net = build_model(MODEL, 1, 10, (8, 8), generator=generator("fit-net"))
        fit(net, x, m.y, steps=4, batch_size=16, generator=generator("fit"), amp=False)
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(nets[0].parameters(), build_model(
        MODEL, 1, 10, (8, 8), generator=generator("fit-net")).parameters()))  # it trained


def test_training_data_decodes_per_minibatch_past_the_cache_limit(summaries):
    s = summaries["kfs"]
    x, target, kind = s.training_data("cpu")
    assert torch.is_tensor(x) and torch.equal(target, s.materialize().y) and kind == "hard"
    x, target, _ = s.training_data("cpu", cache_mb=0)
    assert isinstance(x, DecodedImages) and len(x) == len(target)
    plain = summaries["linba"].materialize()
    x, target, _ = plain.training_data("cpu", cache_mb=0)
    assert x is plain.x or torch.equal(x, plain.x)
