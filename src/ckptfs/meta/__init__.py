"""ckptfs.meta: sidecars (the JSON beside each version) built from the store's records."""
from .sidecar import version_sidecar

__all__ = ["version_sidecar"]
