"""How a run directory's content becomes versions: the layouts training jobs write.

A training job points its output directory at `inbox/<project>/<run>/` and writes what
it always writes there. This module decides, from names and places alone (nothing is
read), which parts of that tree are versions of the run (docs/mount.md, "Training
straight into the mount"):

1. A **checkpoint directory** is a directory that directly holds a `.seal` marker, a
   `ckptfs.json`, a `trainer_state.json`, a file named as frameworks name the parts of
   a checkpoint (`model.safetensors`, `optimizer.pt`, `random_states_0.pkl`, …), a
   `config.json` beside a weights file, or several weights files whose names hold no
   number (the parts of one custom checkpoint). The outermost one wins: everything
   below it belongs to it. One version, named after the directory; read-only once
   sealed.
2. A **checkpoint file** is any other weights file (`*.ckpt`, `model_500.pt`,
   `epoch=3-step=300.ckpt`, `last.ckpt`) that no checkpoint directory holds: one
   version, named after the file without its suffix. Written again, it is sealed
   again as a new version.
3. The **loose files of the run** (those directly in the run directory that are not
   checkpoint files): one version named `final` when they hold a model (the run
   directory itself qualifies as in 1: Trainer's `save_model()`), else `files`.
4. The **files of a folder** of the run (a top-level sub-directory) that belong to no
   checkpoint: TensorBoard's `runs/`, `logs/`, `lightning_logs/`, wandb's folder. One
   version named after the folder.

Units 1 and 2 are of kind `checkpoint`; 4 is of kind `files`, and so is 3 unless it
holds a model. A `files` version is archived and readable but never `latest`, `best`,
a lineage parent or a delta base. Units 3 and 4 are snapshots: when their files change
after a seal, the next seal archives all of their current files again.
"""
import re
from dataclasses import dataclass

from ckptfs.store.names import InvalidNameError, validate_name

SEAL_MARKER = ".seal"
USER_METADATA = "ckptfs.json"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5",
                   ".keras", ".msgpack", ".gguf", ".onnx", ".distcp")

# Files that only ever exist as one part of a checkpoint directory (Hugging Face
# Trainer and save_pretrained, accelerate's save_state, DeepSpeed, torch.distributed).
_PART_NAMES = re.compile("|".join([
    r"(model|pytorch_model|adapter_model|diffusion_pytorch_model)(-\d+-of-\d+)?"
    r"\.(safetensors|bin)",
    r"(model|pytorch_model)\.(safetensors|bin)\.index\.json",
    r"tf_model\.h5", r"flax_model\.msgpack", r"consolidated(\.\d+)?\.(safetensors|pth)",
    r"training_args\.bin", r"(optimizer|scheduler|sampler)(_\d+)?\.(pt|bin)", r"scaler\.pt",
    r"rng_state(_\d+)?\.pth", r"random_states_\d+\.pkl", r"custom_checkpoint_\d+\.pkl",
    r"mp_rank_\d+_model_states\.pt", r"(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt",
    r".+\.distcp",
]))
# Files that say "this directory is one checkpoint" whatever else it holds.
_MARKERS = (SEAL_MARKER, USER_METADATA, "trainer_state.json")

DIR, FILE, GROUP = "dir", "file", "group"
CHECKPOINT, FILES = "checkpoint", "files"
LOOSE_MODEL_NAME, LOOSE_FILES_NAME = "final", "files"


@dataclass(frozen=True)
class Unit:
    """One future version of a run: where it is in the run directory and what it holds."""
    path: str        # in the run directory: "checkpoint-5", "ckpts/model_5.pt", "runs", ""
    shape: str       # DIR (a checkpoint directory), FILE (a checkpoint file), GROUP (loose files)
    kind: str        # CHECKPOINT or FILES
    members: tuple   # paths of its files, symlinks and directories (below its own root)

    @property
    def name_hint(self) -> str:
        return version_name_hint(self)

    def covers(self, path: str) -> bool:
        """Is `path` (in the run directory) part of this unit?"""
        if self.shape == FILE:
            return path == self.path
        if self.path == "":
            return "/" not in path and (path in self.members or not self.members)
        return path == self.path or path.startswith(self.path + "/")


def is_weights(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


def is_part(name: str) -> bool:
    return _PART_NAMES.fullmatch(name) is not None


def has_number(name: str) -> bool:
    return any(ch.isdigit() for ch in name)


def is_checkpoint_directory(names: list[str]) -> bool:
    """Do these names (a directory's files) make it one checkpoint (rule 1)?"""
    weights = [n for n in names if is_weights(n)]
    if any(n in _MARKERS or is_part(n) for n in names):
        return True
    if "config.json" in names and weights:
        return True
    unnumbered = [n for n in weights if not has_number(n) and not n.lower().endswith(".ckpt")]
    return len(unnumbered) >= 2


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def top_of(path: str) -> str:
    return path.split("/", 1)[0]


def classify(entries: dict[str, str]) -> list[Unit]:
    """The units of a run directory, from {path: "file" | "dir" | "symlink"} of what it
    holds (paths relative to the run directory, '/'-separated). A checkpoint directory
    is a unit even when empty of files; nothing else is a unit without a file in it."""
    files_in: dict[str, list[str]] = {}
    for path, kind in entries.items():
        if kind != "dir":
            files_in.setdefault(parent_of(path), []).append(path.rsplit("/", 1)[-1])
    run_is_checkpoint = is_checkpoint_directory(files_in.get("", []))

    dir_units = _checkpoint_directories(entries, files_in)
    claimed = {}
    units = []
    for root in dir_units:
        members = tuple(sorted(p for p in entries if p == root or p.startswith(root + "/")))
        units.append(Unit(root, DIR, CHECKPOINT, members))
        claimed.update(dict.fromkeys(members))
    for path, kind in sorted(entries.items()):
        if path in claimed or kind != "file" or not is_weights(path.rsplit("/", 1)[-1]):
            continue
        if "/" not in path and run_is_checkpoint:
            continue  # part of the run's own model (rule 3)
        units.append(Unit(path, FILE, CHECKPOINT, (path,)))
        claimed[path] = None
    groups: dict[str, list[str]] = {}
    for path, kind in sorted(entries.items()):
        if path in claimed or (kind == "dir" and "/" not in path):
            continue
        if kind == "dir" and any(path == u or u.startswith(path + "/") for u in claimed):
            continue  # a directory on the way to a checkpoint: not the folder's own
        groups.setdefault(top_of(path) if "/" in path else "", []).append(path)
    for top, members in sorted(groups.items()):
        if all(entries[m] == "dir" for m in members):
            continue  # only empty directories: nothing to archive yet
        kind = CHECKPOINT if top == "" and run_is_checkpoint else FILES
        units.append(Unit(top, GROUP, kind, tuple(members)))
    return sorted(units, key=lambda u: u.path)


def _checkpoint_directories(entries: dict[str, str], files_in: dict[str, list[str]]) -> list[str]:
    """Outermost directories that are checkpoints (rule 1), the run directory excluded."""
    found = []
    for path in sorted((p for p, k in entries.items() if k == "dir"), key=lambda p: p.count("/")):
        if any(path.startswith(root + "/") for root in found):
            continue
        if is_checkpoint_directory(files_in.get(path, [])):
            found.append(path)
    return found


def unit_of(units: list[Unit], path: str) -> Unit | None:
    """The unit that holds `path` (a member, or below a checkpoint directory)."""
    for unit in units:
        if path in unit.members or (unit.shape == DIR and path.startswith(unit.path + "/")):
            return unit
    return None


def unit_rooted_at(units: list[Unit], rel: str) -> Unit | None:
    """The unit whose own path is `rel` (a directory asked to seal: the unit it is)."""
    return next((u for u in units if u.path == rel), None)


def units_asked(units: list[Unit], path: str) -> list[Unit]:
    """The units a seal request for `path` names: every unit for "", else the unit that
    holds `path`, else every unit rooted at the folder `path` or below it."""
    if not path:
        return list(units)
    unit = unit_of(units, path)
    if unit is not None:
        return [unit]
    return [u for u in units if u.path == path or u.path.startswith(path + "/")]


def version_name_hint(unit: Unit) -> str:
    """The name the version of `unit` gets unless it is taken (rules above)."""
    if unit.shape == GROUP and unit.path == "":
        return LOOSE_MODEL_NAME if unit.kind == CHECKPOINT else LOOSE_FILES_NAME
    name = unit.path.rsplit("/", 1)[-1]
    if unit.shape == FILE and "." in name[1:]:
        return name.rsplit(".", 1)[0]
    return name


# Names a version cannot take as they are: what the run directory shows itself, and the
# derived alias `best` (a version of that name would hide it).
_RESERVED = ("latest", "best", "run.json")  # (names.RESERVED_VERSION_NAMES and `best`)
MAX_HINT_BYTES = 200


def usable_name(hint: str) -> str:
    """`hint` made a valid version name: control characters and '/' become '_', a name
    ending in '.json' (the sidecars' suffix) gets '_' appended, long ones are cut."""
    name = "".join("_" if ch == "/" or not ch.isprintable() else ch for ch in hint)
    while len(name.encode("utf-8", "surrogateescape")) > MAX_HINT_BYTES:
        name = name[:-1]
    if name.endswith(".json"):
        name += "_"
    if name in ("", ".", ".."):
        name = "checkpoint"
    try:
        validate_name(name, "version")
    except InvalidNameError:
        name = "checkpoint"
    return name


def free_version_name(hint: str, taken) -> str:
    """The version name for a unit whose hint is `hint`: the hint itself, else `hint~2`,
    `hint~3`…, the first that `taken(name)` says is free (a version, an alias or a
    deleted version's name is taken: version names are never reused)."""
    base = usable_name(hint)
    if base not in _RESERVED and not taken(base):
        return base
    n = 2
    while taken(f"{base}~{n}"):
        n += 1
    return f"{base}~{n}"


# -- the wrong depth ----------------------------------------------------------------------
# Names a training job gives to what it writes inside its output directory. Seen as a
# project (output_dir=MOUNT/inbox) or a run (output_dir=MOUNT/inbox/<project>), they
# mean the job was pointed one or two levels too high: refused at once.
_CHECKPOINT_OR_LOG_NAMES = re.compile("|".join([
    r"checkpoints?([-_]\d+)?", r"ckpts?", r"step[-_=]?\d+", r"global_step\d+",
    r"epoch[-_=]?\d+.*", r"runs", r"logs?", r"lightning_logs", r"tb_logs", r"tensorboard",
    r"wandb", r"mlruns",
]), re.IGNORECASE)


def looks_like_job_output(name: str) -> bool:
    """Is `name` what a job writes inside its run directory (a checkpoint, a log folder,
    a weights or results file)?"""
    return _CHECKPOINT_OR_LOG_NAMES.fullmatch(name) is not None or is_weights(name)
