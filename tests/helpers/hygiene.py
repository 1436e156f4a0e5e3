"""What the test_hygiene.py files of several levels (mount, cli, unit) share."""
import os
import stat

import pytest


def write_file(path, data: bytes = b"x" * 1000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def open_umask():
    """The usual umask (022): whatever a process creates is world-readable unless it
    asks otherwise, so a test can see that the store asks."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- 1. a store is private ---------------------------------------------------------------
def readable_by_others(store: str) -> list[str]:
    """Paths under `store` with any group or world permission bit, except below
    spool/inbox/, which keeps the modes writers asked for (the mount shows them)."""
    inbox = os.path.join(store, "spool", "inbox")
    found = []
    for root, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if path.startswith(inbox + os.sep):
                continue
            if stat.S_IMODE(os.lstat(path).st_mode) & 0o077:
                found.append(f"{oct(stat.S_IMODE(os.lstat(path).st_mode))} {path}")
    if stat.S_IMODE(os.lstat(store).st_mode) & 0o077:
        found.append(store)
    return found


NFD_E = "e\u0301"        # é, e + combining acute: looks the same, is not the same bytes


BAD_NAMES = {
    "not UTF-8": os.fsdecode(b"r\xff"),           # how Python hands over the byte 0xff
    "bidi override": "model\u202egpj.exe",
    "zero-width space": "a\u200bb",
    "not NFC": NFD_E,
    "star": "*",
    "leading dash": "-rf",
    "leading space": " run",
    "trailing space": "run ",
    "line separator": "a\u2028b",
}


# -- 2. no secrets in sidecars ---------------------------------------------------------------
GH_TOKEN_VALUE = "ghp_" + "A1b2C3d4" * 5


SECRET_ENV = {
    "DATABASE_URL": "postgres://u:hunter2@db/x",
    "GH_PAT": "pat-hunter2-value",
    "SSHPASS": "hunter2-ssh",
    "AWS_SECRET_ACCESS_KEY": "hunter2-aws",
    "HF_TOKEN": "hf_" + "hunter2" * 4,
    "SESSION_COOKIE": "hunter2-cookie",
    "UPLOAD_TARGET": f"https://{GH_TOKEN_VALUE}@github.com/o/r",   # a token in a URL
    "NOTES": "key AKIAIOSFODNN7EXAMPLE in the middle",
    "MYJOB_NAME": "bert",                                         # not a secret
}


SECRET_ARGV = ["--hub_token", "hf_" + "hunter2" * 4, "--password=hunter2-pw",
               "--db", "mysql://admin:hunter2@db:3306/runs", "--api-key", "hunter2-key",
               "--lr", "3e-4"]


REDACTED_ARGV = ["--hub_token", "<redacted>", "--password=<redacted>",
                 "--db", "mysql://admin:<redacted>@db:3306/runs", "--api-key", "<redacted>",
                 "--lr", "3e-4"]


def assert_no_secret(text: str):
    for secret in ("hunter2", GH_TOKEN_VALUE, "AKIAIOSFODNN7EXAMPLE"):
        assert secret not in text, secret
