"""fastconv.nn's layers built with the arguments of the torch layers they replace."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastconv

from tests.utils import assert_close_rel


@pytest.mark.parametrize("args, kwargs", [((16, 8, 1, 2), {}), ((16, 8), {"kernel_size": (1, 1), "stride": (2, 1)}),
                                          ((16, 8, 1), {"bias": False, "padding": "valid"})])
def test_conv1x1_takes_conv2d_arguments(args, kwargs):
    """Conv1x1(16, 8, 1, 2) built a stride-1 conv with bias=2 (its signature was in, out, stride,
    bias): nn.Conv2d's order now, and nn.Conv2d's state dict and attributes."""
    ref = nn.Conv2d(*args, **kwargs)
    layer = fastconv.nn.Conv1x1(*args, **kwargs)
    layer.load_state_dict(ref.state_dict())
    assert (layer.kernel_size, layer.stride, layer.padding, layer.groups) == ((1, 1), ref.stride, (0, 0), 1)
    x = torch.randn(2, 16, 8, 8)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert_close_rel(layer(x), F.relu(ref(x)), torch.float32, f"{args} {kwargs}")


def test_conv1x1_same_padding_and_one_element_tuples():
    """nn.Conv2d takes padding='same' (zero padding for a 1×1 kernel) and repeats a one-element tuple."""
    for kwargs in ({"padding": "same"}, {"stride": (2,)}):
        ref = nn.Conv2d(4, 4, **{"kernel_size": 1, **kwargs})
        layer = fastconv.nn.Conv1x1(4, 4, **{"kernel_size": 1, **kwargs})
        layer.load_state_dict(ref.state_dict())
        x = torch.randn(1, 4, 5, 5)
        assert_close_rel(layer(x), F.relu(ref(x)), torch.float32, str(kwargs))
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        fastconv.nn.Conv1x1(4, 4, 1, 2, "same")
