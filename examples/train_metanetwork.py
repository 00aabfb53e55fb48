"""Train a graph metanetwork to predict a property of models from their weights.

Here: the log squared Frobenius norm of random MLPs of different depths and widths,
batched together as one PyG Batch of mixed architectures.

    python examples/train_metanetwork.py
"""

import torch
from torch_geometric.data import Batch

import converters
from gmn import GraphMetanetwork, architectures

torch.manual_seed(0)


def random_model_graph():
    depth = int(torch.randint(1, 4, (1,)))
    sizes = (4, *torch.randint(3, 9, (depth,)).tolist(), 2)
    model = architectures.MLP(sizes)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(float(torch.empty(1).uniform_(0.3, 2.0)))
    g = converters.from_torch(model, torch.randn(1, 4))
    g.y = torch.log(sum(p.detach().norm() ** 2 for p in model.parameters())).view(1, 1)
    return g


train = [random_model_graph() for _ in range(64)]
test = Batch.from_data_list([random_model_graph() for _ in range(32)])
net = GraphMetanetwork(hidden=32, layers=3, kind="gmn", readout="graph")
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
for step in range(201):
    batch = Batch.from_data_list([train[i] for i in torch.randperm(len(train))[:16]])
    loss = torch.nn.functional.mse_loss(net(batch), batch.y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        with torch.no_grad():
            test_mse = torch.nn.functional.mse_loss(net(test), test.y)
        print(f"step {step:3d}  train mse {loss.item():.4f}  test mse {test_mse.item():.4f}")
print(f"mean predictor mse {((test.y - torch.cat([g.y for g in train]).mean()) ** 2).mean().item():.4f}")
