"""The names a user chooses among (metanetwork kinds, readouts and pools, property-prediction
methods), in one place that imports nothing: the command line checks its options against them
before it loads the libraries that implement them."""

KINDS = ("gmn", "pna", "scale_gmn", "ng_t")  #: metanetwork layers (gmn.models.GraphMetanetwork's kind)
READOUTS = ("graph", "node", "edge")
POOLS = ("mean", "max", "sum", "attn", "tensor", "output")  #: a graph readout's pools, joined by +
#: gmn bench property's methods: weight statistics, baselines (nfn_*, probe: gmn/tasks/*_baseline.py), metanetworks
METHODS = ("statnn", "mlp", "nfn_np", "nfn_hnp", "probe", *KINDS)
#: how an INR zoo's SIRENs start (gmn.zoo.inr): the field's MNIST INR set's, or the SIREN paper's
SIREN_INITS = ("dwsnets", "sitzmann")
