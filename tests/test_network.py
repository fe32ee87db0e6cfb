import dataclasses

import pytest
import torch
from torch import nn

from rankscope.complexity import count_multiply_adds, count_parameters
from rankscope.errors import ConfigError, GenotypeError
from rankscope.genotype import PUBLISHED, Genotype
from rankscope.network import (Cell, NetworkCIFAR, NetworkConfig, NetworkImageNet, build_network,
                               drop_path)
from rankscope.ops import OPS

# Edge inputs chosen so that reduction cells have strided edges (from inputs 0/1) and stride-1
# edges (from intermediate nodes), and every state is consumed.
_INDICES = (0, 1, 0, 2, 1, 3, 2, 4)


def _one_op_genotype(op: str) -> dict:
    edges = [(op, i) for i in _INDICES]
    return Genotype(normal=edges, normal_concat=range(2, 6), reduce=edges,
                    reduce_concat=range(2, 6)).to_dict()


def _tiny(genotype: dict, dataset: str = "cifar", **kw) -> NetworkConfig:
    base = dict(genotype=genotype, dataset=dataset, C=4, layers=3, num_classes=5)
    base.update(kw)
    return NetworkConfig(**base)


# ---------------------------------------------------------------- drop path

def test_drop_path_identity_at_zero_and_in_eval():
    x = torch.randn(4, 3, 2, 2)
    assert drop_path(x, 0.0, training=True) is x
    assert drop_path(x, 0.5, training=False) is x


def test_drop_path_preserves_expected_value_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 3, 3, dtype=torch.float64)
    y = drop_path(x, 0.3, training=True)
    assert y.dtype == torch.float64 and y.device == x.device
    per_sample = y.flatten(1)
    # Every sample is either all zero or all 1/keep.
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7,
                     dtype=torch.float64)).all(1))
    assert abs((per_sample[:, 0] == 0).double().mean().item() - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03


# ---------------------------------------------------------------- every op, both networks

@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("dataset,size", [("cifar", 8), ("imagenet", 32)])
def test_every_op_forward_backward_both_cell_types(op, dataset, size):
    torch.manual_seed(0)
    net = build_network(_tiny(_one_op_genotype(op), dataset, drop_path_prob=0.3))
    assert isinstance(net, NetworkImageNet if dataset == "imagenet" else NetworkCIFAR)
    assert [c.reduction for c in net.cells] == [False, True, True]
    net.train()
    x = torch.randn(2, 3, size, size)
    logits, aux = net(x)
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    (logits.square().sum() + 0.4 * aux.square().sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_aux_head_only_in_training_and_design_size_pooling():
    torch.manual_seed(0)
    net = build_network(_tiny(PUBLISHED["darts-v2"].to_dict()))
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net(x)  # aux input is 8×8 here: the published 5×5 / stride 3 pool applies
    assert logits.shape == aux.shape == (2, 5)
    net.eval()
    logits, aux = net(x)
    assert logits.shape == (2, 5) and aux is None
    no_aux = build_network(_tiny(PUBLISHED["darts-v2"].to_dict(), auxiliary=False)).train()
    assert no_aux(x)[1] is None
    assert not any("auxiliary" in n for n, _ in no_aux.named_parameters())


def test_drop_path_prob_is_a_settable_attribute():
    torch.manual_seed(0)
    # One-channel 8×8 digits: the aux head's input is 2×2 (adaptive pooling fallback).
    net = build_network(_tiny(PUBLISHED["msr-darts"].to_dict(), drop_path_prob=0.0, layers=8,
                              in_channels=1)).train()
    x = torch.randn(4, 1, 8, 8)
    assert net(x)[1].shape == (4, 5)
    assert torch.equal(net(x)[0], net(x)[0])  # no randomness at p = 0
    net.drop_path_prob = 0.9
    assert not torch.equal(net(x)[0], net(x)[0])


def test_config_round_trips_through_a_dict():
    config = _tiny(PUBLISHED["msr-darts"].to_dict(), dataset="imagenet")
    again = NetworkConfig(**dataclasses.asdict(config))
    assert again == config
    assert NetworkConfig(PUBLISHED["msr-darts"]).genotype == PUBLISHED["msr-darts"].to_dict()
    assert count_parameters(build_network(again)) == count_parameters(build_network(config))


# ---------------------------------------------------------------- clear errors

def test_op_whose_channels_do_not_fit_is_a_clear_error():
    # skip_connect on a strided edge is a FactorizedReduce, which needs an even channel count.
    genotype = Genotype(**{k: v for k, v in _one_op_genotype("skip_connect").items()})
    with pytest.raises(ConfigError, match=r"edge 0 \('skip_connect', input 0\).*C=5"):
        Cell(genotype, 8, 8, 5, reduction=True, reduction_prev=False)


def test_bad_configs_and_genotypes():
    good = PUBLISHED["darts-v2"].to_dict()
    with pytest.raises(ConfigError, match="even C"):
        NetworkConfig(good, dataset="imagenet", C=5)
    with pytest.raises(ConfigError, match="dataset"):
        NetworkConfig(good, dataset="mnist")
    with pytest.raises(ConfigError, match="drop_path_prob"):
        NetworkConfig(good, drop_path_prob=1.0)
    bad = dict(good, normal=[["conv_9x9", 0]] + good["normal"][1:])
    with pytest.raises(GenotypeError, match="conv_9x9"):
        NetworkConfig(bad)


# ---------------------------------------------------------------- sizes

def test_multiply_adds_counted_from_hooks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5))
    conv = 8 * 8 * 4 * 27
    depthwise = 4 * 4 * 4 * 9
    linear = 64 * 5
    model.train()
    assert count_multiply_adds(model, 8) == conv + depthwise + linear
    assert model.training  # mode restored
    assert count_multiply_adds(model, (8, 8), count_batchnorm=True) == conv + depthwise + linear + 2 * 256
    assert count_parameters(model) == 108 + 8 + 36 + 4 + 320 + 5


@pytest.mark.parametrize("name,cifar_m,imagenet_m", [("darts-v2", 3.35, 4.72),
                                                     ("msr-darts", 4.01, 5.67)])
def test_published_parameter_counts(name, cifar_m, imagenet_m):
    g = PUBLISHED[name].to_dict()
    cifar = build_network(NetworkConfig(g))
    imagenet = build_network(NetworkConfig(g, dataset="imagenet", C=48, layers=14, num_classes=1000))
    assert abs(count_parameters(cifar) / 1e6 - cifar_m) < 0.01
    assert abs(count_parameters(imagenet) / 1e6 - imagenet_m) < 0.01
    assert count_parameters(cifar, exclude_auxiliary=False) > count_parameters(cifar)


def test_published_multiply_adds_at_224():
    torch.manual_seed(0)
    counts = {}
    for name in ("darts-v2", "msr-darts"):
        net = build_network(NetworkConfig(PUBLISHED[name].to_dict(), dataset="imagenet", C=48,
                                          layers=14, num_classes=1000))
        counts[name] = (count_multiply_adds(net, 224), count_multiply_adds(net, 224,
                                                                           count_batchnorm=True))
    # Conv + linear multiply-adds, exact (regression values of the hook-based count).
    assert counts["darts-v2"][0] == 529_911_552
    assert counts["msr-darts"][0] == 622_890_816
    # MSR-DARTS's published 632 M is reproduced with BN counted as thop does (complexity.py).
    assert abs(counts["msr-darts"][1] / 632e6 - 1) < 0.01
    # DARTS V2's published 574 M is not reproducible from its genotype (documented in
    # complexity.py); guard the known gap so a change in the network shows up here.
    assert 0.90 < counts["darts-v2"][0] / 574e6 < 0.93
