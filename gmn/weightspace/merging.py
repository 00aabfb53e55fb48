"""Merging models on parameter graphs: interpolation after alignment, and the
same-initialisation merges of fine-tunes.

Models of one architecture trained from different seeds sit in different permutation frames;
averaging them needs :func:`gmn.weightspace.alignment.align` first (Ainsworth et al. 2023), and then the
merged model's activations shrink ("variance collapse"), which Jordan et al. 2023 (REPAIR)
undo per neuron: the merged neuron's pre-activation is rescaled and shifted to the
interpolation of the endpoints' means and standard deviations,

.. math::
    z' = \\frac{\\sigma^*}{\\sigma} (z - \\mu) + \\mu^*, \\qquad
    \\mu^* = \\textstyle\\sum_i w_i \\mu_i, \\; \\sigma^* = \\sum_i w_i \\sigma_i ,

by scaling the neuron's incoming weights and bias; BatchNorm networks get their running
statistics recomputed on data instead (the same correction, done by the norm). Fine-tunes of
one base share a frame and merge as task vectors ``tau_i = theta_i - theta_base``: task
arithmetic (Ilharco et al. 2023) adds ``lambda * sum tau_i``; TIES (Yadav et al. 2023) keeps
each task vector's largest ``density`` share of entries, elects a sign per entry by total
mass and averages the entries that agree with it; DARE (Yu et al. 2024) drops entries with
probability ``1 - density`` and rescales the rest by ``1 / density`` before adding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

import converters
from converters import ParameterGraph, with_values
from converters.vocab import EdgeType

from ..activations import neuron_activations
from .alignment import align, same_template

METHODS = ("average", "task-arithmetic", "ties", "dare")


def _weights(count: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} models")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("merge weights must have a positive sum")
    return [float(w) / total for w in weights]


def _values(graphs: Sequence[ParameterGraph]) -> Tensor:
    if not all(same_template(graphs[0], g) for g in graphs[1:]):
        raise ValueError("merging needs graphs of one architecture (one template)")
    return torch.stack([converters.parameter_values(g).double() for g in graphs])


def _float_buffers(g: ParameterGraph) -> dict[str, Tensor]:
    return {k: v for k, v in g.param_index.buffers.items() if v.is_floating_point()}


def interpolate(graphs: Sequence[ParameterGraph], weights: Sequence[float] | None = None) -> ParameterGraph:
    """The weighted average of models of one template (parameters and floating buffers)."""
    w = _weights(len(graphs), weights)
    values = (torch.tensor(w, dtype=torch.float64)[:, None] * _values(graphs)).sum(0)
    buffers = {name: sum(wi * g.param_index.buffers[name].double() for wi, g in zip(w, graphs)).to(b.dtype)
               for name, b in _float_buffers(graphs[0]).items()}
    return _with(graphs[0], values, buffers)


def _with(g: ParameterGraph, values: Tensor, buffers: dict[str, Tensor] | None = None) -> ParameterGraph:
    """``with_values`` (which keeps the model attached) in the graph's own value dtype."""
    return with_values(g, values.to(g.edge_value.dtype), buffers)


def align_and_interpolate(graphs: Sequence[ParameterGraph], weights: Sequence[float] | None = None,
                          inputs: tuple | None = None, keep_residual_stream: bool = False) -> ParameterGraph:
    """Every model aligned to the first (by weights, or by activations on ``inputs``), then averaged."""
    aligned = [graphs[0]] + [align(graphs[0], g, inputs=inputs, keep_residual_stream=keep_residual_stream)
                             for g in graphs[1:]]
    return interpolate(aligned, weights)


def canonicalise(graphs: Iterable[ParameterGraph], reference: ParameterGraph) -> list[ParameterGraph]:
    """Every model of a zoo aligned to one reference, so that all share its frame."""
    return [align(reference, g) for g in graphs]


def task_vector_merge(base: ParameterGraph, graphs: Sequence[ParameterGraph], method: str = "task-arithmetic",
                      scale: float = 1.0, density: float = 0.2, seed: int = 0) -> ParameterGraph:
    """Merge fine-tunes of ``base`` (no permutation: they share its frame) by ``method``:
    ``task-arithmetic``, ``ties`` or ``dare``; ``scale`` is lambda, ``density`` the share of each
    task vector kept (TIES: largest magnitudes; DARE: at random, rescaled)."""
    if method not in METHODS[1:]:
        raise ValueError(f"unknown merge method {method!r}; choose from {', '.join(METHODS[1:])}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    theta = _values([base, *graphs])
    tau = theta[1:] - theta[0]
    if method == "ties":
        tau = _ties(tau, density)
    elif method == "dare":
        gen = torch.Generator().manual_seed(seed)
        keep = torch.rand(tau.shape, generator=gen, dtype=torch.float64) < density
        tau = (tau * keep / density).sum(0)
    else:
        tau = tau.sum(0)
    return _with(base, theta[0] + scale * tau)


def _ties(tau: Tensor, density: float) -> Tensor:
    k = max(1, round(density * tau.size(1)))
    cut = tau.abs().topk(k, dim=1).values[:, -1:]
    trimmed = torch.where(tau.abs() >= cut, tau, torch.zeros_like(tau))
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp_min(1)
    return (trimmed * agree).sum(0) / count


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def batchnorm_statistics(g: ParameterGraph) -> list[tuple[str, str]]:
    """State-dict keys (running mean, running variance) of the graph's BatchNorms: its model's
    ``nn.BatchNorm`` modules, or an ONNX file's BatchNormalization nodes (``OnnxModule``
    lists them); a graph without its model (a saved graph) by its buffers' names."""
    model = getattr(g, "model", None)
    if isinstance(model, nn.Module):
        listed = getattr(model, "batchnorm_statistics", None)  # converters.onnx_frontend.OnnxModule
        if listed is not None:
            return list(listed)
        return [(f"{name}.running_mean", f"{name}.running_var") for name, _ in _batchnorms(model)]
    buffers = g.param_index.buffers
    return [(k, k.removesuffix("mean") + "var") for k in buffers
            if k.endswith("running_mean") and k.removesuffix("mean") + "var" in buffers]


def recompute_batchnorm(g: ParameterGraph, batches: Iterable[tuple]) -> ParameterGraph:
    """``g`` with its BatchNorm running statistics recomputed on ``batches`` (tuples of model
    inputs): the average over all batches (as ``momentum=None`` gives), every BatchNorm
    normalising with its batch's statistics and every other layer in eval mode. Works on
    PyTorch models and ONNX files alike; a graph with BatchNorm but no model attached (a saved
    graph) is refused, since its statistics cannot be recomputed."""
    pairs = batchnorm_statistics(g)
    if not pairs:
        return g
    model = getattr(g, "model", None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model has {len(pairs)} BatchNorm layers but no runnable module (a saved graph?): "
                         "their statistics cannot be recomputed; load the checkpoint with its architecture or the "
                         "ONNX file")
    state = {k: v.clone() for k, v in converters.to_state_dict(g).items()}
    for mean, var in pairs:
        state[mean].zero_()
        state[var].fill_(1)
        counter = mean.removesuffix("running_mean") + "num_batches_tracked"
        if counter in state:
            state[counter].zero_()
    norms = _batchnorms(model)
    momenta = {name: m.momentum for name, m in norms}
    was_training = model.training
    model.train(False)
    for _, m in norms:
        m.train(True)
    onnx = hasattr(model, "batchnorm_momentum")
    if onnx:
        model.train(True)  # an ONNX module's BatchNormalization nodes read its mode, nothing else does
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                count += 1
                for _, m in norms:  # the running average over batches: batch k weighs 1/k
                    m.momentum = 1.0 / count
                if onnx:
                    model.batchnorm_momentum = 1.0 / count
                torch.func.functional_call(model, state, tuple(batch))
    finally:
        model.train(was_training)
        for name, m in norms:
            m.momentum = momenta[name]
        if onnx:
            model.batchnorm_momentum = None
    if count == 0:
        raise ValueError("recomputing BatchNorm statistics needs at least one batch of inputs")
    buffers = {k: state[k] for k in g.param_index.buffers if k in state}
    return _with(g, converters.parameter_values(g), buffers)


def repairable(g: ParameterGraph, inputs: tuple) -> list[int]:
    """The neurons REPAIR corrects: outputs of layers that are modules (their activations can be
    measured, :mod:`gmn.activations`), with a bias (the shift goes there) and no norm after
    them (BatchNorm is corrected by :func:`recompute_batchnorm`; a LayerNorm undoes a rescale)."""
    n = int(g.num_param_edges)
    dst = g.edge_index[1, :n]
    has_bias = torch.zeros(g.num_nodes, dtype=torch.bool)
    has_bias[dst[g.edge_type[:n].long() == int(EdgeType.BIAS)]] = True
    followed_by_norm = torch.zeros(g.num_nodes, dtype=torch.bool)
    followed_by_norm[g.edge_index[0][g.edge_type.long() == int(EdgeType.NORM_WEIGHT)]] = True
    measured = neuron_activations(g, None, inputs)
    return [u for u in measured if has_bias[u] and not followed_by_norm[u]]


def repair(merged: ParameterGraph, endpoints: Sequence[ParameterGraph], inputs: tuple,
           weights: Sequence[float] | None = None) -> ParameterGraph:
    """REPAIR (Jordan et al. 2023): rescale and shift every :func:`repairable` neuron so its
    pre-activation statistics on ``inputs`` are the weighted interpolation of the endpoints'
    (which must be aligned to ``merged``'s frame). A BatchNorm network's statistics must be
    recomputed first (:func:`recompute_batchnorm`): REPAIR measures the merged model as it will
    run, and a later recomputation would change what it measured (measured on a residual CNN:
    REPAIR then recomputation 0.594 -> 0.457 accuracy, recomputation then REPAIR 0.594 -> 0.610).
    Refused when no neuron can be corrected, or with fewer than two inputs (no spread)."""
    if len(inputs[0]) < 2:
        raise ValueError("REPAIR matches the neurons' standard deviations: it needs at least 2 inputs")
    nodes = repairable(merged, inputs)
    if not nodes:
        raise ValueError("REPAIR found no neuron to correct: it corrects outputs of PyTorch layers with a bias and "
                         "no norm after them (an ONNX file's layers cannot be measured; BatchNorm layers are "
                         "corrected by recomputing their statistics)")
    w = _weights(len(endpoints), weights)
    target_mu, target_sd = {}, {}
    for wi, g in zip(w, endpoints):
        for node, x in neuron_activations(g, None, inputs).items():
            target_mu[node] = target_mu.get(node, 0.0) + wi * float(x.mean())
            target_sd[node] = target_sd.get(node, 0.0) + wi * float(x.std())
    n = int(merged.num_param_edges)
    dst = merged.edge_index[1, :n]
    bias = merged.edge_type[:n].long() == int(EdgeType.BIAS)
    nodes = [u for u in nodes if u in target_mu]
    depth = merged.node_depth.long()
    out = merged
    for level in sorted({int(depth[u]) for u in nodes}):  # in order: a layer is measured after the ones before it
        acts = neuron_activations(out, None, inputs)
        values = converters.parameter_values(out).double().clone()
        scale = torch.ones(merged.num_nodes, dtype=torch.float64)
        shift = torch.zeros(merged.num_nodes, dtype=torch.float64)
        for u in nodes:
            if int(depth[u]) == level and u in acts:
                s = target_sd[u] / max(float(acts[u].std()), 1e-12)
                scale[u], shift[u] = s, target_mu[u] - s * float(acts[u].mean())
        values = values * scale[dst]  # the neuron's incoming weights and bias scale with it
        values[bias] += shift[dst[bias]]
        out = _with(out, values)
    return out


def evaluate(g: ParameterGraph, x: Tensor, y: Tensor, batch: int = 1024) -> tuple[float, float]:
    """Cross-entropy and accuracy of the graph's model (its ``model`` run with its values); a
    sequence model's logits ``(batch, tokens, classes)`` are scored at every token."""
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits = converters.functional_call(g, None, x[i:i + batch]).double()
            logits, target = logits.reshape(-1, logits.size(-1)), y[i:i + batch].reshape(-1)
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += target.numel()
    return loss / count, correct / count


def interpolation_path(a: ParameterGraph, b: ParameterGraph, x: Tensor, y: Tensor, points: int = 11,
                       batches: Iterable[tuple] | None = None, repair_inputs: tuple | None = None) -> list[dict]:
    """Loss and accuracy of ``(1 - alpha) a + alpha b`` on ``(x, y)`` for ``points`` values of
    ``alpha``; with ``batches``, BatchNorm statistics are recomputed at every inner point; with
    ``repair_inputs``, REPAIR corrects every inner point's neurons towards the endpoints'."""
    rows = []
    batches = list(batches) if batches is not None else None
    for alpha in torch.linspace(0, 1, points).tolist():
        if alpha in (0.0, 1.0):
            g = a if alpha == 0 else b
        else:
            g = interpolate([a, b], [1 - alpha, alpha])
            if batches is not None:
                g = recompute_batchnorm(g, batches)
            if repair_inputs is not None:  # measured on the model as it runs: after its BatchNorm statistics
                g = repair(g, [a, b], repair_inputs, [1 - alpha, alpha])
        loss, acc = evaluate(g, x, y)
        rows.append({"alpha": alpha, "loss": loss, "accuracy": acc})
    return rows


def barrier(path: list[dict]) -> dict[str, float]:
    """The loss barrier (largest rise above the line between the endpoints' losses) and the
    accuracy barrier (largest fall below the line between their accuracies) of a path."""
    first, last = path[0], path[-1]

    def gap(key: str, sign: float) -> float:
        return max(sign * (r[key] - ((1 - r["alpha"]) * first[key] + r["alpha"] * last[key])) for r in path)

    return {"loss": gap("loss", 1.0), "accuracy": gap("accuracy", -1.0)}


__all__ = ["METHODS", "align_and_interpolate", "barrier", "batchnorm_statistics", "canonicalise", "evaluate",
           "interpolate", "interpolation_path", "recompute_batchnorm", "repair", "repairable", "task_vector_merge"]
