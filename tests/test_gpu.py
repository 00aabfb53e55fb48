"""GPU paths of converters, metanetworks and tasks (``pytest -m gpu``; skipped without CUDA)."""

import pytest
import torch

import converters
from gmn import GraphMetanetwork
from gmn.architectures import BUILTIN

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["cnn", "resnet18", "moe-transformer"])
def test_a_cuda_model_converts_like_its_cpu_copy(name):
    factory, example = BUILTIN[name]
    torch.manual_seed(0)
    model, x = factory().eval(), example()
    cpu = converters.from_torch(model, x)
    gpu = converters.from_torch(model.cuda(), x.cuda())
    assert torch.equal(gpu.edge_index, cpu.edge_index) and torch.equal(gpu.edge_value, cpu.edge_value)
    y = converters.functional_call(gpu, converters.parameter_values(gpu).cuda(), x.cuda())
    torch.testing.assert_close(y, model(x.cuda()))


def test_chunked_pass_streams_a_host_graph_through_the_gpu():
    from gmn.models.chunked import chunked_forward

    factory, example = BUILTIN["vit"]
    g = converters.from_torch(factory(), example())
    net = GraphMetanetwork(hidden=16, layers=2, readout="edge").eval()
    with torch.no_grad():
        whole = net(g)
    chunked = chunked_forward(net.cuda(), g, chunk_size=g.num_edges // 5 + 1)
    torch.testing.assert_close(chunked.cpu(), whole, rtol=1e-3, atol=1e-4)


def test_bf16_training_on_cuda_learns_and_matches_float32(tiny_zoo):
    from gmn.data import ZooDataset, split_by_run
    from gmn.tasks import TrainConfig, fit_metanetwork

    ds = ZooDataset(tiny_zoo, targets=("test_acc", "gap"), progress=False)
    split = split_by_run(ds.run, ds.family, fractions=(0.2, 0.2))
    base = dict(epochs=30, hidden=16, layers=2, lr=3e-3, batch_size=2, patience=100, device="cuda")
    bf16 = fit_metanetwork(ds, split, "gmn", TrainConfig(**base, amp=True), progress=False)
    fp32 = fit_metanetwork(ds, split, "gmn", TrainConfig(**base, amp=False), progress=False)
    assert bf16.history[-1]["train_loss"] < 0.7 * bf16.history[0]["train_loss"]
    assert abs(bf16.history[-1]["train_loss"] - fp32.history[-1]["train_loss"]) < 0.2
