"""ckptfs.web: the read-only web application of `ckptfs serve` (pages, assets, and the
Prometheus exposition at /metrics: metrics.py)."""
