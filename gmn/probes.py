"""Probe features: what every neuron computes on a few fixed inputs, as node features.

Kofinas et al. 2024 (Neural Graphs) add to each neuron its activations on a fixed set of
probe inputs: a direct view of the function a model computes, which the weights alone show
only through many layers of message passing (an INR's output neuron on a coordinate grid
is the image it draws). The features are equivariant by construction: permuting a layer's
neurons permutes its output channels, so the features move with the neurons.

A neuron is the output channel ``j`` of a ``Linear`` or ``Conv`` module when row ``j`` of the
module's weight feeds it; its feature is that channel's pre-activation (spatial mean for
convolutions) at each of the ``K`` probe inputs. Input neurons get their input channel.
Every other node (bias, structural, neurons of other ops) gets zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import converters
from converters import ParameterGraph
from converters.vocab import NodeType

CHANNEL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _channel_means(x: Tensor, channel_dim: int) -> Tensor:
    """``[K, C]``: channel ``c`` of each probe's output, averaged over every other axis."""
    x = x.movedim(channel_dim, -1)
    return x.reshape(x.size(0), -1, x.size(-1)).mean(1)


def neuron_channels(template: ParameterGraph, module: nn.Module) -> dict[str, Tensor]:
    """Per ``Linear``/``Conv`` submodule name: the node fed by each row of its weight."""
    out = {}
    for name, shape, _ in template.param_index.params:
        owner = name.rpartition(".")[0]
        if not name.endswith(".weight") or not isinstance(module.get_submodule(owner), CHANNEL_MODULES):
            continue
        rows = template.edge_index[1][template.param_index.edge_ids(name)].view(shape[0], -1)
        if bool((rows == rows[:, :1]).all()):  # one target node per row: the row's neuron
            out[owner] = rows[:, 0]
    return out


@torch.no_grad()
def probe_features(template: ParameterGraph, module: nn.Module, inputs: Tensor,
                   values: Tensor | None = None) -> Tensor:
    """``[num_nodes, K]``: each neuron's pre-activation at the ``K`` probe ``inputs`` (a batch
    for ``module``), run with ``values`` (``converters.parameter_values`` order; default the
    template's own)."""
    values = converters.parameter_values(template) if values is None else values
    state = converters.to_state_dict(template, values)
    channels = neuron_channels(template, module)
    features = torch.zeros(template.num_nodes, inputs.size(0))
    outputs: dict[str, Tensor] = {}
    hooks = [module.get_submodule(name).register_forward_hook(
        lambda m, args, y, name=name: outputs.__setitem__(name, y)) for name in channels]
    try:
        was_training = module.training
        torch.func.functional_call(module.eval(), state, (inputs,))
        module.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    for name, nodes in channels.items():
        dim = -1 if isinstance(module.get_submodule(name), nn.Linear) else 1
        features[nodes] = _channel_means(outputs[name], dim).T.float()
    if not inputs.is_floating_point():  # token ids: no input channels to show
        return features
    inputs_nodes = (template.node_type == int(NodeType.INPUT)).nonzero().squeeze(1)
    in_channels = _channel_means(inputs, -1 if inputs.dim() == 2 else 1)
    index = template.node_index[inputs_nodes].long()
    known = (index >= 0) & (index < in_channels.size(1))
    features[inputs_nodes[known]] = in_channels[:, index[known]].T.float()
    return features


def member_probe_features(dataset, inputs: Tensor, members: Tensor | None = None) -> dict[int, Tensor]:
    """:func:`probe_features` at ``inputs`` of the ``members`` (default: all) of a
    :class:`~gmn.data.ZooDataset`, keyed by member index and squashed by ``asinh``
    (pre-activations span orders of magnitude; no statistics, so no neuron is singled out)."""
    modules = dataset.arch_modules()
    members = range(len(dataset)) if members is None else members.tolist()
    return {i: torch.asinh(probe_features(dataset.templates[dataset.arch_keys[i]], modules[dataset.arch_keys[i]][0],
                                          inputs, dataset.values[i])) for i in members}


def batch_features(features: dict[int, Tensor] | None, batch) -> Tensor | None:
    """The node features of a batch of zoo graphs (nodes in batch order); None without features."""
    if features is None:
        return None
    return torch.cat([features[m] for m in batch.member.tolist()]).to(batch.edge_index.device)


__all__ = ["batch_features", "member_probe_features", "neuron_channels", "probe_features"]
