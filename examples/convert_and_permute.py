"""Convert a model, permute its neurons through the graph, and check nothing changed.

    python examples/convert_and_permute.py
"""

import copy

import torch

import converters
from gmn import architectures, summary, symmetry

model = architectures.ViT(dim=16, heads=4, mlp=32).eval()
x = torch.randn(2, 3, 8, 8)

g = converters.from_torch(model, x)
print(summary(g))

# A random function-preserving reparametrisation: heads, hidden neurons, residual channels.
g2 = symmetry.random_symmetry(g, seed=0)
twin = copy.deepcopy(model)
twin.load_state_dict(converters.to_state_dict(g2))
changed = (converters.parameter_values(g2) != converters.parameter_values(g)).float().mean()
print(f"{changed:.0%} of the weights moved; max output difference "
      f"{(twin(x) - model(x)).abs().max():.2e}")

# Edit weights through the graph and run the edited model without building it.
values = converters.parameter_values(g) * 0.9
print("edited output:", converters.functional_call(g, values, x)[0, :3])
