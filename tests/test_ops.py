import pytest
import torch

from rankscope.ops import OPS, PRIMITIVES_MSR, last_conv, make_op


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_every_op_forward_backward(name, stride, affine):
    torch.manual_seed(0)
    op = make_op(name, 4, stride, affine)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 4, 8 // stride, 8 // stride)
    y.square().sum().backward()
    assert x.grad is not None or name == "none"
    for p in op.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", PRIMITIVES_MSR)
def test_conv_ops_expose_last_pointwise_conv(name):
    conv = last_conv(make_op(name, 6, 1, False))
    assert conv.kernel_size == (1, 1) and conv.in_channels == conv.out_channels == 6


def test_unknown_op_and_bad_stride():
    with pytest.raises(ValueError, match="unknown op"):
        make_op("conv_9x9", 4, 1, True)
    with pytest.raises(ValueError, match="stride"):
        make_op("sep_conv_3x3", 4, 3, True)
    with pytest.raises(ValueError, match="no last pointwise conv"):
        last_conv(make_op("max_pool_3x3", 4, 1, True))
