"""Shipyard: a dataset to a trained, versioned model, served and watched — on one laptop or at scale."""

__version__ = "0.1.0"
