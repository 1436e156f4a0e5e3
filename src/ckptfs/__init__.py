"""ckptfs: a versioned artifact filesystem for machine-learning checkpoints.

For training code writing into a mount: `ckptfs.seal(path)`, `ckptfs.annotate(path, …)`
and `ckptfs.state(path)` (see ckptfs/api.py).
"""

__version__ = "0.1.0"

_API = ("seal", "annotate", "state", "CkptfsError", "NotInMountError", "SealFailedError")


def __getattr__(name):
    # Imported on first use: `import ckptfs` (and every CLI start) stays light.
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'ckptfs' has no attribute {name!r}")
