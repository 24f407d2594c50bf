"""The error every data loader raises (kept free of heavy imports, so that preparing data does
not import torch)."""


class DatasetError(ValueError):
    """A dataset folder or file is missing, malformed, or inconsistent; the message names it."""
