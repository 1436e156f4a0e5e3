"""ckptfs.meta: sidecars and what fills them.

Extractors for known checkpoint files (extract.py), the user's ckptfs.json (user.py),
provenance of the writing process (provenance.py), project schemas (schema.py), the
query language of `ckptfs find` (query.py), run history and lineage (lineage.py), and
the seal that ties them to the store (seal.py).
"""
from .sidecar import render, run_sidecar, tombstone_sidecar, version_sidecar

__all__ = ["render", "run_sidecar", "tombstone_sidecar", "version_sidecar"]
