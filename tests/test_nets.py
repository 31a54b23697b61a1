import pytest
import torch

from distill_apps.errors import ConfigError
from distill_apps.nets import build_model, list_models


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_any_input(shape):
    x = torch.randn(2, *shape)
    for name in list_models():
        net = build_model(name, shape[0], 7, shape[1:])
        out = net(x)
        assert out.shape == (2, 7), name
        assert net.embed(x).shape[0] == 2


def test_convnet_options_and_defaults():
    net = build_model("convnet", 1, 10, (28, 28))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and convs[0].out_channels == 128
    assert isinstance(net.features[1], torch.nn.GroupNorm) and net.features[1].num_groups == 128  # instance norm
    assert isinstance(net.features[3], torch.nn.AvgPool2d)
    bn = build_model("convnet-d2-w16-bn-maxpool", 3, 10, 32)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 2
    with pytest.raises(ConfigError):
        build_model("convnet-zz", 1, 10, 8)
    with pytest.raises(ConfigError, match="Known models"):
        build_model("nosuchnet", 1, 10, 8)


def test_generator_init_is_deterministic_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a = build_model("convnet", 1, 10, 8, generator=torch.Generator().manual_seed(3))
    b = build_model("convnet", 1, 10, 8, generator=torch.Generator().manual_seed(3))
    c = build_model("convnet", 1, 10, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
