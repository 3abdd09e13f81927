"""torch.fx symbolic tracing of fastconv models: the functionals record their torch.library ops in
the graph (their Python checks used to meet a torch.fx.Proxy and raise), so torch.fx.symbolic_trace
and torchvision's create_feature_extractor work on fastconv.models and on converted models."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import fastconv
from tests.models.test_models import TOL, image, tv_model
from tests.utils import rel_err

NODES = {"resnet18": "layer4", "densenet121": "features.denseblock4", "googlenet": "inception4e"}


def _models(name):
    ref = tv_model(name)
    own = getattr(fastconv.models, name)(**({"init_weights": False} if name == "googlenet" else {}))
    own.load_state_dict(ref.state_dict())
    return ref, own.eval(), fastconv.convert(ref)


@pytest.mark.parametrize("name", list(NODES))
def test_symbolic_trace_and_feature_extraction(name):
    ref, own, converted = _models(name)
    x = image(n=1, size=64, seed=7)
    with torch.no_grad():
        want = ref(x)
        for model in (own, converted):
            graph = torch.fx.symbolic_trace(model)
            ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
            assert any(op.startswith("fastconv.") for op in ops), ops
            assert rel_err(graph(x), want) <= TOL
        node = NODES[name]
        got = create_feature_extractor(own, {node: "f"})(x)["f"]
        assert rel_err(got, create_feature_extractor(ref, {node: "f"})(x)["f"]) <= TOL


def test_fx_unsupported_arguments_are_named():
    class Same(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return fastconv.conv2d_relu(x, self.w * 2, padding="same")  # a computed weight: kernel unknown

    with pytest.raises(NotImplementedError, match="under torch.fx tracing"):
        torch.fx.symbolic_trace(Same())


def test_same_padding_of_layers_and_dense_concat_trace():
    """'same' padding traces where the weight is a module's tensor (a layer's, a converted conv's:
    its kernel size is known), and dense_concat records its op, as the other functionals do."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(fastconv.nn.Conv2dReLU(3, 8, 3, padding="same"),
                                 fastconv.nn.Conv2dReLU(8, 8, (2, 4), padding="same", dilation=(1, 2)))
    converted = fastconv.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, padding="same"), torch.nn.ReLU()).eval())

    class Concat(torch.nn.Module):
        def forward(self, x):
            return fastconv.dense_concat([x, fastconv.max_pool2d(x, 3, 1, 1)])

    x = torch.randn(2, 3, 9, 10)
    with torch.no_grad():
        for model in (layers, converted, Concat()):
            graph = torch.fx.symbolic_trace(model)
            assert any(str(n.target).startswith("fastconv.") for n in graph.graph.nodes if n.op == "call_function")
            torch.testing.assert_close(graph(x), model(x))
        with pytest.raises(NotImplementedError, match="no out="):
            torch.fx.symbolic_trace(type("ConcatOut", (torch.nn.Module,), {
                "forward": lambda self, x: fastconv.dense_concat([x, x], out=torch.empty(2, 6, 9, 10))})())
