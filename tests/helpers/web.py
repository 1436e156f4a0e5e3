"""What the dashboard's tests (tests/web) and scripts/screenshots.py share: a store with
several runs (metrics at several steps, a parent chain across runs and projects, a tag,
a project one user may not read), `ckptfs serve` as a real process, and headless
chromium driven by selenium (Debian's chromium and chromium-driver; selenium never
downloads a browser here)."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from types import SimpleNamespace

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.waiting import wait_for

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# (project, run, version, step, metrics, parent or None); sealed in this order. Each
# run's versions follow each other (parent: the previous one); sweep-lr forks from
# nlp/base/step-300, vision/ft fine-tunes nlp/base/step-500, secret is nobody's.
VERSIONS = [
    *[("nlp", "base", f"step-{s}", s, {"loss": round(2.0 / (i + 1), 4),
                                       "eval_loss": round(2.2 / (i + 1) + (0.3 if s == 500 else 0), 4),
                                       "accuracy": round(0.5 + 0.08 * i, 4)}, None)
      for i, s in enumerate((100, 200, 300, 400, 500))],
    *[("nlp", "sweep-lr", f"step-{s}", s, {"loss": round(1.4 / (i + 1), 4),
                                           "eval_loss": round(1.5 / (i + 1), 4),
                                           "accuracy": round(0.6 + 0.1 * i, 4)},
       "nlp/base/step-300" if i == 0 else None)
      for i, s in enumerate((400, 500, 600))],
    ("vision", "ft", "v1", 50, {"loss": 0.9, "top1": 0.71}, "nlp/base/step-500"),
    ("vision", "ft", "v2", 100, {"loss": 0.6, "top1": 0.78}, None),
    ("secret", "hidden-run", "s1", 10, {"loss": 0.5}, None),
]
TAGGED = ("nlp", "base", "production", "step-400")
# Versions read before writing (what the mount records as lineage.inputs), by reader.
INPUTS = {"vision/ft/v2": ["nlp/sweep-lr/step-600"]}
NOBODY = 65534


def write_version(root, project, run, version, step, metrics, parent, number) -> str:
    path = os.path.join(root, project, run, version)
    os.makedirs(path)
    with open(os.path.join(path, "model.bin"), "wb") as f:
        f.write(bytes([number % 251]) * 20000 + os.urandom(4000))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "demo", "hidden_size": 64}, f)
    user = {"step": step, "epoch": step / 100, "metrics": metrics,
            "lineage": {"hyperparameters": {"learning_rate": 3e-4 if run == "sweep-lr" else 1e-4,
                                            "batch_size": 32},
                        "environment": {"python": "3.11", "packages": {"torch": "2.13.0"}}}}
    if parent:
        user["lineage"]["parent"] = parent
    with open(os.path.join(path, "ckptfs.json"), "w") as f:
        json.dump(user, f)
    return path


def build_store(path: str, enforce: bool = True) -> SimpleNamespace:
    """The demo store at `path` (made by this process's user, admin of `*`): VERSIONS,
    the tag, `best` by the lowest eval_loss, and with `enforce` roles enforced, nobody
    a reader of nlp and vision but not of secret. Its files are open to every user (as
    tests/cli's open_store), so a server can run as nobody."""
    sources = tempfile.mkdtemp(prefix="ckptfs-web-src-")
    try:
        with Store.init(path) as store:
            for number, (p, r, v, step, metrics, parent) in enumerate(VERSIONS):
                src = write_version(sources, p, r, v, step, metrics, parent, number)
                inputs = [dict(zip(("project", "run", "version"), ref.split("/")))
                          for ref in INPUTS.get(f"{p}/{r}/{v}", ())]
                archive_directory(store, src, p, r, v,
                                  read_lineage={"inputs": inputs} if inputs else None)
            store.set_alias(*TAGGED)
            store.update_project_settings("nlp", {"primary_metric": "eval_loss", "mode": "min"})
            store.update_project_settings("vision", {"primary_metric": "loss", "mode": "min"})
            if enforce:
                store.grant("nlp", f"user:{NOBODY}", "reader")
                store.grant("vision", f"user:{NOBODY}", "reader")
                store.set_enforcement(True)
    finally:
        shutil.rmtree(sources, ignore_errors=True)
    subprocess.run(["chmod", "-R", "a+rwX", path], check=True)
    return SimpleNamespace(path=path, versions=VERSIONS)


def expected_edges(projects=("nlp", "vision", "secret")) -> set[tuple[str, str]]:
    """(parent, child) of every lineage link between versions of `projects`: parents
    and inputs read."""
    edges, previous = set(), {}
    for p, r, v, _, _, parent in VERSIONS:
        ref = f"{p}/{r}/{v}"
        for link in [parent or previous.get((p, r)), *INPUTS.get(ref, ())]:
            if link and link.split("/")[0] in projects and p in projects:
                edges.add((link, ref))
        previous[(p, r)] = ref
    return edges


def start_server(store: str, *args, uid: int | None = None):
    """`ckptfs serve STORE --port 0 ARGS` as a process of its own (as user `uid`, via
    setpriv): (the process, its address once it has printed it, the thread reading its
    output). stop_server ends it."""
    command = [sys.executable, "-m", "ckptfs", "serve", store, "--port", "0", *args]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd="/", text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    wait_for(lambda: lines or server.poll() is not None, "the server's address")
    if not lines or " on http://" not in lines[0]:
        error = server.stderr.read() if server.poll() is not None else ""
        stop_server(server, reader)
        raise AssertionError(f"ckptfs serve did not start: {lines} {error}")
    return server, lines[0].split(" on ", 1)[1].split()[0].rstrip("/"), reader


def stop_server(server, reader) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    reader.join(timeout=60)
    server.stdout.close()
    server.stderr.close()


@contextlib.contextmanager
def serving(store: str, *args, uid: int | None = None):
    """start_server as a context: yields the address, stops the server (SIGTERM)."""
    server, address, reader = start_server(store, *args, uid=uid)
    try:
        yield address
    finally:
        stop_server(server, reader)


def chromium():
    """Headless chromium under selenium, keeping the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
