"""The `ckptfs` command line (entry point `ckptfs.cli.app:main`).

`app` holds the command group and turns errors into one line and an exit code; each
topic module (stores, versions, export, meta, access, audit, keys, retention, recovery,
mount, copy, diff, completion) defines its commands over `_common` (opening the store,
checking the caller's role, output) and the layers below, and `app` registers them.
Imports go one way: app -> topic modules -> _common.
"""


def __getattr__(name):
    # `ckptfs.cli.main`: what console scripts installed before the package was split
    # import (and `python -c "from ckptfs.cli import main"`).
    if name == "main":
        from ckptfs.cli.app import main
        return main
    raise AttributeError(f"module 'ckptfs.cli' has no attribute {name!r}")
