"""ckptfs: a versioned artifact filesystem for machine-learning checkpoints."""

__version__ = "0.1.0"
