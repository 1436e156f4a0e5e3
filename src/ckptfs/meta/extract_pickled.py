"""Facts from the pickled files at the top of a checkpoint directory, read by
meta/pickled.py (walked opcode by opcode, never unpickled):

- `training_args.bin` (Hugging Face Trainer: a pickled TrainingArguments) ->
  lineage.hyperparameters and lineage.seeds, as training_args.json gives them;
- a Lightning `*.ckpt` -> epoch, step, the module's hyper_parameters (nested dicts
  flattened to dotted keys), the Lightning version, and each ModelCheckpoint callback's
  current score as metrics[<monitor>];
- a standalone `torch.save` file (`*.pt`, `*.pth`, or a `*.ckpt` that is not
  Lightning's) whose top-level dict holds `epoch`, `step` or `global_step` integers.

Each function is called through extract.guarded: a file that cannot be read raises
SkipField with the reason, which becomes a warning.
"""
import math
import re

from .fields import (FieldReader, SkipField, is_int, is_number, is_placeholder, json_safe,
                     merge_lineage, open_regular_file, put_if_set, set_package,
                     training_lineage)
from .pickled import Unreadable, read_pickled

LIGHTNING_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters",
                  "callbacks")
PROGRESS_KEYS = ("epoch", "step", "global_step")
# What a Trainer checkpoint holds besides the model: not a standalone checkpoint.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def read_values(src_dir: str, name: str, keys=None):
    f, size = open_regular_file(src_dir, name)
    with f:
        try:
            return read_pickled(f, size, keys)
        except Unreadable as e:
            raise SkipField(f"pickle not read ({e})") from None


# -- training_args.bin ---------------------------------------------------------------------------

def add_training_args_bin(src_dir: str, name: str, facts: dict, extracted: dict,
                          warnings: list[str]) -> None:
    found = read_values(src_dir, name)
    if not isinstance(found.value, dict) or is_placeholder(found.value):
        raise SkipField("does not hold training arguments (an object with fields)")
    extracted["training_args_bin"] = {"path": name, "class": found.root_class,
                                      "keys": len(found.value)}
    merge_lineage(facts, training_lineage(FieldReader(found.value, name, warnings)))


# -- Lightning checkpoints ---------------------------------------------------------------------

def add_lightning_checkpoint(src_dir: str, name: str, facts: dict, extracted: dict,
                             warnings: list[str]) -> None:
    ckpt = read_values(src_dir, name, LIGHTNING_KEYS).value
    if not isinstance(ckpt, dict):
        raise SkipField("does not hold a dict")
    fields = FieldReader(ckpt, name, warnings)
    version = fields.string("pytorch-lightning_version")
    if version is None:  # another tool's checkpoint: only its progress
        return add_progress(ckpt, name, facts, extracted, warnings)
    summary: dict = {"path": name, "version": version}
    put_if_set(summary, "epoch", fields.integer("epoch"))
    put_if_set(summary, "global_step", fields.integer("global_step"))
    set_progress(facts, summary.get("global_step"), summary.get("epoch"))
    set_package(facts, "lightning", version)
    hyperparameters = fields.typed("hyper_parameters", is_plain_dict, "a dict")
    if hyperparameters:
        merge_lineage(facts, training_lineage(
            FieldReader(hyperparameters, f"{name} hyper_parameters", warnings), flatten=True))
    callbacks = fields.typed("callbacks", is_plain_dict, "a dict") or {}
    summary.update(add_model_checkpoint_scores(callbacks, name, facts, warnings))
    extracted["lightning"] = summary


def add_model_checkpoint_scores(callbacks: dict, name: str, facts: dict,
                                warnings: list[str]) -> dict:
    """metrics[<monitor>] = current_score of each ModelCheckpoint callback (its key in
    `callbacks` is `ModelCheckpoint{'monitor': ..., ...}`); the summary of the first
    one that monitors something."""
    metrics: dict = {}
    summary: dict = {}
    for key, state in callbacks.items():
        if not (key.startswith("ModelCheckpoint") and is_plain_dict(state)):
            continue
        monitor = state.get("monitor")
        if not isinstance(monitor, str):
            continue
        score = tensor_number(state.get("current_score"))
        if score is not None and math.isfinite(score):
            metrics[json_safe(monitor)] = score
        elif score is not None:
            warnings.append(f"{name}: ModelCheckpoint current_score of {json_safe(monitor)} "
                            f"is not finite ({score}): skipped")
        if not summary:
            summary = model_checkpoint_summary(state, monitor, mode_in_key(key))
    if metrics:
        facts.setdefault("metrics", {}).update(metrics)
    return summary


def mode_in_key(key: str) -> str | None:
    """The callback's mode, which Lightning writes into its state key
    (`ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', …}`) and not its state."""
    found = re.search(r"'mode': '(min|max)'", key)
    return found.group(1) if found else None


def model_checkpoint_summary(state: dict, monitor: str, mode: str | None) -> dict:
    summary = {"monitor": json_safe(monitor)}
    if mode:
        summary["mode"] = mode
    best = tensor_number(state.get("best_model_score"))
    if best is not None and math.isfinite(best):
        summary["best_model_score"] = best
    for key in ("best_model_path", "last_model_path"):
        path = state.get(key)
        if isinstance(path, str) and path:  # the file's name, not where it was written
            summary[key] = json_safe(path.replace("\\", "/").rsplit("/", 1)[-1])
    return summary


def tensor_number(value) -> float | None:
    """A number, or the value of a single-element tensor the reader could read."""
    if isinstance(value, dict) and "__tensor__" in value:
        value = value.get("value")
    return float(value) if is_number(value) else None


def is_plain_dict(value) -> bool:
    return isinstance(value, dict) and not is_placeholder(value)


# -- standalone torch.save files -----------------------------------------------------------------

def is_standalone_torch_file(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((".pt", ".pth")) and not lower.startswith(TRAINER_STATE_FILES)


def add_torch_progress(src_dir: str, name: str, facts: dict, extracted: dict,
                       warnings: list[str]) -> None:
    found = read_values(src_dir, name, PROGRESS_KEYS).value
    if isinstance(found, dict):
        add_progress(found, name, facts, extracted, warnings)


def add_progress(values: dict, name: str, facts: dict, extracted: dict,
                 warnings: list[str]) -> None:
    """epoch and step from the integers `epoch`, `step`, `global_step` of a checkpoint's
    top-level dict; `step` and `global_step` that disagree are ambiguous: neither is used."""
    epoch = values.get("epoch") if is_int(values.get("epoch")) else None
    steps = {values[key] for key in ("step", "global_step") if is_int(values.get(key))}
    if len(steps) > 1:
        warnings.append(f"{name}: step and global_step differ ({min(steps)}, {max(steps)}): "
                        "neither used")
    step = steps.pop() if len(steps) == 1 else None
    if step is None and epoch is None:
        return
    summary = {"path": name}
    put_if_set(summary, "epoch", epoch)
    put_if_set(summary, "step", step)
    extracted["torch_checkpoint"] = summary
    set_progress(facts, step, epoch)


def set_progress(facts: dict, step, epoch) -> None:
    """step and epoch, unless an earlier source gave them."""
    if step is not None:
        facts.setdefault("step", step)
    if epoch is not None:
        facts.setdefault("epoch", epoch)
