"""ckptfs.meta: sidecars and what fills them.

Extractors for known checkpoint files (extract.py; extract_pickled.py for
training_args.bin and Lightning checkpoints, through pickled.py, which reads a pickle's
values without unpickling it; fields.py, what every extractor shares), the pickle scan
(scan.py; pickle_stream.py, the opcode reading it shares with pickled.py), the user's
ckptfs.json (user.py), provenance of the writing process (provenance.py), project
schemas (schema.py), the query language of `ckptfs find` (query.py), run history and
lineage (lineage.py), and the seal that ties them to the store (seal.py).
"""
from .sidecar import render, run_sidecar, tombstone_sidecar, version_sidecar

__all__ = ["render", "run_sidecar", "tombstone_sidecar", "version_sidecar"]
