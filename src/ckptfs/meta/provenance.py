"""Who wrote a checkpoint: the writing process described from /proc, without subprocesses.

`describe_process(pid)` accepts a process id or a thread id (FUSE reports the thread that
made the request) and returns its executable, command line, working directory, user,
host, allow-listed environment variables, the git commit of its working directory, the
Python version and the versions of the packages whose native libraries it has mapped.
Every piece is best effort: a piece that cannot be read is None, never an exception.

Environment variables are copied only when their name matches the allow-list (fnmatch
globs, case-sensitive) AND does not look like a secret (`looks_like_secret`: TOKEN,
SECRET, PASSWORD, KEY, AUTH, COOKIE, SESSION… in the name, or PASS/PAT as a word of it):
such a variable is never copied, whatever the allow-list says (even "*"). What is
copied, and the command line, has secrets in its values redacted (`redact_text`):
passwords in URLs (`postgres://u:<redacted>@db/x`) and tokens of known formats
(GitHub, Hugging Face, AWS, Slack, OpenAI-style keys, PEM private keys) become
"<redacted>", as does the value of a command-line option whose name looks like a
secret (`--hub_token X`, `--password=X`). docs/sidecar.md, "Secrets".
"""
import fnmatch
import os
import re
import socket

from ckptfs.store.users import user_name

DEFAULT_ENV_ALLOW = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_NAME",
                     "SLURM_ARRAY_TASK_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                     "CONDA_DEFAULT_ENV", "VIRTUAL_ENV")
SECRET_NAME_PATTERNS = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*KEY*",
                        "*CREDENTIAL*", "*AUTH*", "*COOKIE*", "*SESSION*", "*PASS")
# Short words that mean a secret only as a whole word of a name (GH_PAT, DB_PASS; not
# PATIENCE, PATH or NUM_PASSES).
SECRET_NAME_WORDS = frozenset({"PASS", "PAT"})
REDACTED = "<redacted>"
# scheme://user:password@host: the password goes, the rest of the URL stays.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)")
# Tokens whose format gives them away wherever they appear.
_TOKEN_PATTERNS = (
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",                  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",                # GitHub fine-grained tokens
    r"\bglpat-[A-Za-z0-9_-]{20,}",                    # GitLab
    r"\bhf_[A-Za-z0-9]{20,}",                         # Hugging Face
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                 # AWS access key ids
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",               # Slack
    r"\bsk-[A-Za-z0-9_-]{20,}",                       # OpenAI/Anthropic-style API keys
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
)
_KNOWN_TOKENS = re.compile("|".join(_TOKEN_PATTERNS))
SITE_DIR_MARKERS = ("/site-packages/", "/dist-packages/")
MAX_GIT_WALK_LEVELS = 64
MAX_SYMREF_DEPTH = 5
MAX_SMALL_FILE_READ = 16 << 20

_PYTHON_EXE = re.compile(r"^python(\d+)(?:\.(\d+))?$")
_LIBPYTHON = re.compile(r"/libpython(\d+)\.(\d+)[a-z]*\.so")
_LIBCUDART = re.compile(r"^libcudart\.so\.(\d+(?:\.\d+)?)")
_GIT_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def describe_process(pid: int, env_allow: list[str] | tuple = DEFAULT_ENV_ALLOW,
                     inside: str | None = None) -> dict:
    """The provenance record of process (or thread) `pid`; {"pid", "gone": True, "host"}
    when it no longer exists.

    `inside`: a directory whose files must not be touched (the daemon's own mount): a
    writer working in it (rsync's receiver changes into its destination) holds a
    lock on the directory while it waits for the daemon, so looking for `.git` there
    would wait for itself. Its git information is then left out."""
    host = socket.gethostname()
    status = read_status(pid)
    if status is None:
        return {"pid": pid, "gone": True, "host": host}
    tgid = parse_int(status.get("Tgid")) or pid
    proc = f"/proc/{tgid}"
    executable = read_link(f"{proc}/exe")
    cwd = read_link(f"{proc}/cwd")
    uid = parse_int((status.get("Uid") or "").split("\t")[0])
    mapped = read_mapped_paths(proc)
    return {
        "pid": tgid,
        "executable": executable,
        "command_line": redact_command_line(read_command_line(proc)),
        "cwd": cwd,
        "uid": uid,
        "user": user_name(uid),
        "host": host,
        "environment": read_environment(proc, env_allow),
        "git": git_info(cwd) if cwd and not is_within(cwd, inside) else None,
        "python": python_version(executable, mapped),
        "packages": None if mapped is None else mapped_package_versions(mapped),
        "cuda": None if mapped is None else cuda_version(mapped),
    }


def is_within(path: str, directory: str | None) -> bool:
    if not directory:
        return False
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory + "/") or directory == "/"


def describe_this_process(env_allow: list[str] | tuple = DEFAULT_ENV_ALLOW) -> dict:
    """describe_process of the calling process (what `ckptfs import` records)."""
    return describe_process(os.getpid(), env_allow)


def lineage_from_provenance(prov: dict) -> dict:
    """The lineage fragment a provenance record implies: code (from git) and environment."""
    lineage = {}
    git = prov.get("git") or {}
    code = without_none({"git_commit": git.get("commit"), "repository": git.get("repository"),
                         "branch": git.get("branch"), "dirty": git.get("dirty")})
    if code:
        lineage["code"] = code
    environment = without_none({"python": prov.get("python"),
                                "packages": prov.get("packages") or None,
                                "cuda": prov.get("cuda"), "host": prov.get("host")})
    if environment:
        lineage["environment"] = environment
    return lineage


def without_none(parts: dict) -> dict:
    return {k: v for k, v in parts.items() if v is not None}


# -- /proc readers -------------------------------------------------------------------------------

def read_small_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_SMALL_FILE_READ)
    except (OSError, ValueError):
        return None


def read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except (OSError, ValueError):
        return None


def read_status(pid: int) -> dict | None:
    """/proc/<pid>/status as {field: value}; works for thread ids too."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    data = read_small_file(f"/proc/{pid}/status")
    if data is None:
        return None
    status = {}
    for line in data.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            status[name] = value.strip()
    return status


def parse_int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def read_command_line(proc: str) -> list[str] | None:
    data = read_small_file(f"{proc}/cmdline")
    if data is None:
        return None
    if data.endswith(b"\0"):
        data = data[:-1]
    return [arg.decode("utf-8", "replace") for arg in data.split(b"\0")] if data else []


def read_environment(proc: str, env_allow) -> dict | None:
    data = read_small_file(f"{proc}/environ")
    if data is None:
        return None
    environment = {}
    for item in data.split(b"\0"):
        name, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and env_name_allowed(name, env_allow):
            environment[name] = redact_text(value)
    return environment


def env_name_allowed(name: str, env_allow) -> bool:
    if looks_like_secret(name):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in env_allow)


def looks_like_secret(name: str) -> bool:
    """Does `name` (of an environment variable, a training argument…) match, in any
    case, one of SECRET_NAME_PATTERNS, or have one of SECRET_NAME_WORDS as a word? Such
    values are never copied into a sidecar."""
    upper = name.upper()
    if any(fnmatch.fnmatchcase(upper, pattern) for pattern in SECRET_NAME_PATTERNS):
        return True
    return not SECRET_NAME_WORDS.isdisjoint(re.split(r"[^A-Z0-9]+", upper))


def redact_text(text: str) -> str:
    """`text` with URL passwords and tokens of known formats replaced by <redacted>."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    return _KNOWN_TOKENS.sub(REDACTED, text)


_OPTION = re.compile(r"^-{1,2}(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?:=(?P<value>.*))?$", re.DOTALL)


def redact_command_line(argv: list[str] | None) -> list[str] | None:
    """argv with secrets redacted: `--token=X` and `--token X` (an option whose name
    looks like a secret) lose X; every argument goes through redact_text."""
    if argv is None:
        return None
    redacted, hide_next = [], False
    for arg in argv:
        option = _OPTION.match(arg)
        if hide_next and option is None:
            redacted.append(REDACTED)
        elif option and looks_like_secret(option["name"]):
            has_value = option["value"] is not None
            redacted.append(arg.split("=", 1)[0] + "=" + REDACTED if has_value else arg)
            hide_next = not has_value
            continue
        else:
            redacted.append(redact_text(arg))
        hide_next = False
    return redacted


def read_mapped_paths(proc: str) -> list[str] | None:
    """The distinct file paths in /proc/<pid>/maps, in order of first appearance."""
    data = read_small_file(f"{proc}/maps")
    if data is None:
        return None
    paths = {}
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths[fields[5].removesuffix(" (deleted)")] = None
    return list(paths)


# -- what the process runs -------------------------------------------------------------------

def python_version(executable: str | None, mapped: list[str] | None) -> str | None:
    """"3.11" from the executable's name, or from a mapped libpython3.X.so when the name is
    only python3; None when the executable is not a Python interpreter."""
    if not executable:
        return None
    match = _PYTHON_EXE.match(os.path.basename(executable))
    if not match:
        return None
    if match.group(2):
        return f"{match.group(1)}.{match.group(2)}"
    for path in mapped or ():
        lib = _LIBPYTHON.search(path)
        if lib:
            return f"{lib.group(1)}.{lib.group(2)}"
    return match.group(1)


def cuda_version(mapped: list[str]) -> str | None:
    for path in mapped:
        match = _LIBCUDART.match(os.path.basename(path))
        if match:
            return match.group(1)
    return None


def mapped_package_versions(mapped: list[str]) -> dict:
    """{distribution name: version} of the installed packages with a file mapped."""
    versions: dict = {}
    site_indexes: dict = {}
    for path in mapped:
        located = split_site_path(path)
        if located is None:
            continue
        site_dir, top_name = located
        if site_dir not in site_indexes:
            site_indexes[site_dir] = site_distributions(site_dir)
        found = site_indexes[site_dir].get(normalize_name(top_name))
        if found:
            versions[found[0]] = found[1]
    return dict(sorted(versions.items()))


def split_site_path(path: str) -> tuple[str, str] | None:
    """(site-packages dir, import name) of a path inside site-packages, else None."""
    for marker in SITE_DIR_MARKERS:
        at = path.rfind(marker)
        if at >= 0:
            first = path[at + len(marker):].split("/", 1)[0]
            # numpy.libs → numpy; _foo.cpython-311-x86_64-linux-gnu.so → _foo
            name = first.split(".", 1)[0]
            return (path[:at + len(marker) - 1], name) if name else None
    return None


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def site_distributions(site_dir: str) -> dict:
    """{normalized import or distribution name: (distribution name, version)} of site_dir.

    An import name declared by top_level.txt (e.g. sklearn → scikit_learn) is used only
    when exactly one distribution declares it."""
    by_name: dict = {}
    by_top_level: dict = {}
    try:
        entries = os.listdir(site_dir)
    except OSError:
        return {}
    for entry in entries:
        parsed = parse_dist_dir_name(entry)
        if parsed is None:
            continue
        by_name[normalize_name(parsed[0])] = parsed
        for top in read_top_level_names(os.path.join(site_dir, entry)):
            by_top_level.setdefault(normalize_name(top), []).append(parsed)
    index = {name: dists[0] for name, dists in by_top_level.items() if len(dists) == 1}
    index.update(by_name)
    return index


def parse_dist_dir_name(entry: str) -> tuple[str, str] | None:
    for suffix in (".dist-info", ".egg-info"):
        if entry.endswith(suffix):
            name, sep, rest = entry[:-len(suffix)].partition("-")
            version = rest.split("-", 1)[0]
            return (name, version) if sep and name and version else None
    return None


def read_top_level_names(dist_dir: str) -> list[str]:
    data = read_small_file(os.path.join(dist_dir, "top_level.txt"))
    if not data:
        return []
    return [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]


# -- git, read from the files ------------------------------------------------------------------

def git_info(path: str) -> dict | None:
    """{"commit", "branch", "repository", "root", "dirty"} of the git work tree holding path.

    Read from .git without running git. "dirty" is always None: telling a clean tree from
    a dirty one needs the index compared with the files, which is git's job and out of
    scope here. "repository" is the origin URL (credentials removed) or else the work
    tree's top directory. None when no repository is found or it cannot be read."""
    try:
        found = find_git_dir(path)
        if found is None:
            return None
        root, git_dir = found
        common_dir = read_common_dir(git_dir)
        head = read_text(os.path.join(git_dir, "HEAD"))
        if head is None:
            return None
        commit, branch = resolve_head(head.strip(), git_dir, common_dir)
        origin = read_origin_url(common_dir)
        return {"commit": commit, "branch": branch,
                "repository": strip_url_credentials(origin) if origin else root,
                "root": root, "dirty": None}
    except (OSError, ValueError):
        return None


def read_text(path: str) -> str | None:
    data = read_small_file(path)
    return None if data is None else data.decode("utf-8", "replace")


def find_git_dir(path: str) -> tuple[str, str] | None:
    """(work tree top, git dir) for the nearest .git at or above path."""
    current = os.path.abspath(path)
    for _level in range(MAX_GIT_WALK_LEVELS):
        dot_git = os.path.join(current, ".git")
        if os.path.isdir(dot_git):
            return current, dot_git
        if os.path.isfile(dot_git):
            git_dir = read_gitdir_file(dot_git)
            return (current, git_dir) if git_dir else None
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None


def read_gitdir_file(dot_git_file: str) -> str | None:
    """The target of a `.git` file ("gitdir: <path>"), used by worktrees and submodules."""
    text = read_text(dot_git_file)
    if text is None or not text.startswith("gitdir:"):
        return None
    target = text[len("gitdir:"):].strip()
    git_dir = os.path.join(os.path.dirname(dot_git_file), target)
    return os.path.normpath(git_dir) if os.path.isdir(git_dir) else None


def read_common_dir(git_dir: str) -> str:
    """Where the shared refs and config live: <git_dir>/commondir for a worktree."""
    text = read_text(os.path.join(git_dir, "commondir"))
    if text is None or not text.strip():
        return git_dir
    return os.path.normpath(os.path.join(git_dir, text.strip()))


def resolve_head(head: str, git_dir: str, common_dir: str) -> tuple[str | None, str | None]:
    """(commit, branch) from the content of HEAD; the commit is None for an unborn branch."""
    if _GIT_SHA.match(head):
        return head, None
    if not head.startswith("ref:"):
        return None, None
    ref = head[len("ref:"):].strip()
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    return resolve_ref(ref, git_dir, common_dir), branch


def resolve_ref(ref: str, git_dir: str, common_dir: str) -> str | None:
    for _depth in range(MAX_SYMREF_DEPTH):
        if not is_safe_ref_name(ref):
            return None
        loose = read_loose_ref(ref, git_dir, common_dir)
        if loose is None:
            return read_packed_ref(ref, common_dir)
        if _GIT_SHA.match(loose):
            return loose
        if not loose.startswith("ref:"):
            return None
        ref = loose[len("ref:"):].strip()
    return None


def is_safe_ref_name(ref: str) -> bool:
    parts = ref.split("/")
    return ref.startswith("refs/") and ".." not in parts and "" not in parts and "\0" not in ref


def read_loose_ref(ref: str, git_dir: str, common_dir: str) -> str | None:
    for base in dict.fromkeys((git_dir, common_dir)):
        text = read_text(os.path.join(base, ref))
        if text is not None:
            return text.strip()
    return None


def read_packed_ref(ref: str, common_dir: str) -> str | None:
    text = read_text(os.path.join(common_dir, "packed-refs"))
    for line in (text or "").splitlines():
        if line.startswith(("#", "^")):
            continue
        sha, _, name = line.strip().partition(" ")
        if name.strip() == ref and _GIT_SHA.match(sha):
            return sha
    return None


def read_origin_url(common_dir: str) -> str | None:
    """url of [remote "origin"] in the repository's config, by a plain line scan."""
    text = read_text(os.path.join(common_dir, "config"))
    in_origin = False
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.startswith("["):
            in_origin = re.fullmatch(r'\[\s*remote\s+"origin"\s*\]', line) is not None
            continue
        key, sep, value = line.partition("=")
        if in_origin and sep and key.strip().lower() == "url":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def strip_url_credentials(url: str) -> str:
    """url without a password or token: https://user:tok@host/x → https://host/x.

    For http(s) the whole user part goes (tokens are often put there alone); for other
    schemes (ssh://git@host) only a password after ':' is removed."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@]*)@(.*)$", url)
    if not match:
        return url
    scheme, userinfo, rest = match.groups()
    if scheme.lower() in ("http://", "https://"):
        return scheme + rest
    return f"{scheme}{userinfo.split(':', 1)[0]}@{rest}"
