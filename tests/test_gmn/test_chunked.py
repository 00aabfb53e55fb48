"""Chunked metanetwork passes equal whole passes, for every readout."""

import pytest
import torch

import converters
from gmn import GraphMetanetwork
from gmn.architectures import BUILTIN
from gmn.models.chunked import chunked_forward


@pytest.fixture(scope="module")
def graph():
    factory, example = BUILTIN["gqa-transformer"]
    torch.manual_seed(0)
    return converters.from_torch(factory(), example())


@pytest.mark.parametrize("readout", ["graph", "node", "edge"])
@pytest.mark.parametrize("aggr", ["mean", "mean+max"])
def test_chunked_pass_equals_whole_pass(graph, readout, aggr):
    torch.manual_seed(1)
    net = GraphMetanetwork(hidden=16, layers=3, readout=readout, aggr=aggr).eval()
    with torch.no_grad():
        whole = net(graph)
    chunked = chunked_forward(net, graph, chunk_size=graph.num_edges // 7 + 1)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    if readout == "edge":
        assert chunked[converters.parameter_edge_mask(graph)].size(0) == graph.num_parameters


def test_chunked_pass_refuses_what_it_cannot_do(graph):
    with pytest.raises(ValueError, match="kind='gmn'"):
        chunked_forward(GraphMetanetwork(hidden=8, layers=1, kind="pna"), graph)
