"""The converters' error, importable without the graph machinery (PyG) behind it."""


class ConversionError(ValueError):
    """A model (or file) cannot be turned into a parameter graph; the message says why."""
