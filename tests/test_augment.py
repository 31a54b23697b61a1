import torch

from distill_apps.augment import DSA, OPS


def _g(s=0):
    return torch.Generator().manual_seed(s)


def test_same_params_same_transform_for_real_and_synthetic():
    dsa = DSA()
    x = torch.randn(6, 3, 16, 16)
    for seed in range(12):  # covers every op in single mode
        p = dsa.sample(1, _g(seed), (16, 16))
        real, syn = dsa.apply(x, p), dsa.apply(x.clone(), p)
        assert torch.equal(real, syn)
        # Siamese: all images of a group share one draw -> equal inputs give equal outputs
        same = dsa.apply(x[:1].expand(4, -1, -1, -1).contiguous(), p)
        assert torch.allclose(same[0], same[3])


def test_groups_get_their_own_draw_and_ops_change_images():
    dsa = DSA(mode="multi")
    x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1).contiguous()
    p = dsa.sample(2, _g(1), (16, 16))
    out = dsa.apply(x, p, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], x[0])


def test_differentiable_wrt_input():
    dsa = DSA(mode="multi")
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    p = dsa.sample(1, _g(2), (8, 8))
    dsa.apply(x, p).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_each_single_op_and_flip_rule():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    for op in OPS:
        d = DSA(strategy=op)
        outs = [d.apply(x, d.sample(1, _g(s), (8, 8))) for s in range(6)]
        assert any(not torch.allclose(o, x) for o in outs), op
    assert "flip" not in DSA.for_dataset(flip_invariant=False).ops
    assert "flip" in DSA.for_dataset(flip_invariant=True).ops
    flip = DSA(strategy="flip")
    outs = [flip.apply(x, flip.sample(1, _g(s), (8, 8))) for s in range(8)]
    assert any(torch.equal(o, x.flip(-1)) for o in outs)  # an exact mirror, not an interpolation
    crop = DSA(strategy="crop", crop=0.25)
    o = crop.apply(x, crop.sample(1, _g(5), (8, 8)))
    assert torch.allclose(o.round(), o, atol=1e-4)  # integer pixel shifts keep values exact
