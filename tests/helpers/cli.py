"""The `ckptfs` command run the way a user runs it: a subprocess of the real CLI."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def run_cli(*args, check=False, input=None, env=None, **kw):
    """Run the real `ckptfs` command in a subprocess; returns CompletedProcess (bytes)."""
    proc = subprocess.run([sys.executable, "-m", "ckptfs", *map(str, args)],
                          capture_output=True, input=input, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ckptfs {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


def run_cli_checked(*args, rc=0, **kw):
    """run_cli, checking the exit code (rc=None: any) and that no traceback escaped: an
    error a user can cause must come out as one `ckptfs: error: ...` line."""
    proc = run_cli(*args, **kw)
    error = proc.stderr.decode(errors="replace")
    assert "Traceback" not in error, f"ckptfs {args} crashed:\n{error}"
    if rc is not None:
        assert proc.returncode == rc, (
            f"ckptfs {args}: exit {proc.returncode}, expected {rc}\nstdout: "
            f"{proc.stdout.decode(errors='replace')}\nstderr: {error}")
    return proc


def run_cli_many(*calls, rc=0):
    """Several read-only commands, two at a time (most of each run is Python starting up);
    results in the order given."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli_checked(*args, rc=rc), calls))
