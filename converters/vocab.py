"""Type vocabularies of the parameter graph: one enum each, documented in one place.

Node types, edge types and activation kinds are small integers stored in the graph
(``node_type``, ``edge_type``, ``node_act``). Add new members at the end only: saved
graphs and trained metanetworks depend on the numbering.
"""

from __future__ import annotations

from enum import IntEnum


class NodeType(IntEnum):
    """What a node of a parameter graph stands for."""

    INPUT = 0  #: an input channel of the model (carries its index)
    HIDDEN = 1  #: a neuron made by a layer with parameters (linear, conv, norm, ...)
    OUTPUT = 2  #: an output channel of the model (carries its index)
    BIAS = 3  #: one per layer: source of its bias / shift edges
    TOKEN = 4  #: one row of an embedding table (a one-hot input; carries its index)
    SUM = 5  #: elementwise sum of neurons (residual connections)
    PRODUCT = 6  #: elementwise product of neurons (gating, expert weighting)
    ATTENTION = 7  #: the contraction of two neuron sets (an attention head's scores)
    NORM_GROUP = 8  #: one group of a GroupNorm
    CONSTANT = 9  #: a neuron fed by a parameter used as a tensor (class token)
    UNUSED = 10  #: holds parameter scalars that the traced forward never reads
    MERGE = 11  #: neurons of tensors concatenated along a non-channel axis
    ACTIVATION = 12  #: a second activation applied to neurons that already had one
    POSITIONAL = 13  #: neurons combined with a constant that differs per channel (rotary)


class EdgeType(IntEnum):
    """What an edge stands for. Parameter edges carry one scalar each."""

    LINEAR = 0  #: weight of a linear map (also matmul with a parameter, experts)
    CONV = 1  #: weight of a convolution; ``edge_pos`` is the kernel offset
    CONV_TRANSPOSE = 2  #: weight of a transposed convolution
    BIAS = 3  #: bias of a linear / conv layer, from the layer's bias node
    NORM_WEIGHT = 4  #: scale of a normalisation layer
    NORM_BIAS = 5  #: shift of a normalisation layer
    EMBEDDING = 6  #: one entry of an embedding table, from its token node
    SCALE = 7  #: a parameter multiplied elementwise (RMSNorm weight, LayerScale)
    SHIFT = 8  #: a parameter added elementwise (positional embedding)
    CONSTANT = 9  #: a parameter used as a tensor (class token)
    UNUSED = 10  #: a parameter scalar the forward never reads
    RESIDUAL = 11  #: summand -> sum (no parameter)
    PRODUCT = 12  #: factor -> product (no parameter)
    ACTIVATION = 13  #: neuron -> its activated copy (no parameter)
    MERGE = 14  #: part -> merged neuron of a concatenation along a non-channel axis
    MATMUL_LEFT = 15  #: left operand neuron -> contraction node (e.g. query -> head)
    MATMUL_RIGHT = 16  #: right operand neuron -> contraction node (e.g. key -> head)
    CONTRACT_PAIR = 17  #: the two neurons multiplied together in a contraction (q_i . k_i)
    NORM_GROUP = 18  #: GroupNorm group -> member channel
    POSITIONAL = 19  #: neuron -> its copy combined with a per-channel constant; pos = channel
    RECURRENT = 20  #: weight from a recurrent layer's state (previous step) to its gates
    PRELU_SLOPE = 21  #: a PReLU's negative slope, from the neuron to its activated copy
    SCALED = 22  #: neuron -> its copy times a finite number (``x * c``, ``x / c``); pos codes ``c``


class Activation(IntEnum):
    """Nonlinearity applied at a neuron (``node_act``)."""

    NONE = 0
    RELU = 1
    LEAKY_RELU = 2
    GELU = 3
    SILU = 4
    TANH = 5
    SIGMOID = 6
    SOFTMAX = 7
    ELU = 8
    SOFTPLUS = 9
    HARDSWISH = 10
    HARDTANH = 11
    MISH = 12
    OTHER = 13
    SIN = 14
    NEG = 15  #: negation: ``-x`` is no copy of ``x`` (rotary's rotate-half subtracts one half)
    EXP = 16  #: elementwise functions with no symmetry of their own, each its own kind, so that
    LOG = 17  #: two branches computing different functions are never taken for each other
    SQRT = 18
    RSQRT = 19
    POW = 20
    ABS = 21
    ERF = 22
    RECIPROCAL = 23
    COS = 24
    CLAMP = 25
    SIGN = 26
    PRELU = 27  #: ``max(0, x) + a * min(0, x)``, the slope ``a`` on the edge into the neuron


#: Activations f with f(s x) = s f(x) for s > 0: hidden neurons may be rescaled.
POSITIVE_HOMOGENEOUS = frozenset({Activation.RELU, Activation.LEAKY_RELU})

#: Activations with f(-x) = -f(x): hidden neurons may be sign-flipped.
ODD = frozenset({Activation.TANH, Activation.SIN})

#: Edge types that carry one parameter scalar each.
PARAMETER_EDGE_TYPES = frozenset(
    {
        EdgeType.LINEAR,
        EdgeType.CONV,
        EdgeType.CONV_TRANSPOSE,
        EdgeType.BIAS,
        EdgeType.NORM_WEIGHT,
        EdgeType.NORM_BIAS,
        EdgeType.EMBEDDING,
        EdgeType.SCALE,
        EdgeType.SHIFT,
        EdgeType.CONSTANT,
        EdgeType.UNUSED,
        EdgeType.RECURRENT,
        EdgeType.PRELU_SLOPE,
    }
)
