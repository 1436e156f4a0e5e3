"""Facts read from the known files of a checkpoint directory (Hugging Face Trainer layout).

`extract_facts(src_dir)` returns a partial sidecar document (step, epoch, metrics, lineage
and an `extracted` section per file kind) plus human-readable warnings. The directory's
content is untrusted: nothing here raises because of it, nothing is unpickled, and
symlinks are never followed. Each malformed field is skipped with a warning while the
rest is still extracted.

Read: `*.safetensors` headers (any depth); at the top level only, `config.json`,
`trainer_state.json`, `training_args.json` and `training_args.bin`, the Hugging Face
result files (`all_results.json`, `eval_results.json`…), a Lightning `*.ckpt` or a
standalone `*.pt`/`*.pth` (their pickles read by meta/pickled.py, never unpickled:
extract_pickled.py); the zip central directory or first bytes of pickled files
(`*.pt *.pth *.bin *.ckpt *.pkl`, any depth).

Where two files say the same thing, the precedence (docs/sidecar.md) is: step and
epoch from trainer_state.json, else a Lightning checkpoint, else a standalone torch
file, else (epoch only) the result files; metrics from trainer_state.json's last
evaluation, overridden key by key by a Lightning checkpoint's score and then by the
result files (the final word of a finished run); hyperparameters and seeds from
training_args.json overridden key by key by training_args.bin (what the Trainer itself
saved, and reads back on resume).
"""
import math
import os
import struct
import zipfile

from . import extract_pickled
from .fields import (FieldReader, SkipField, is_bookkeeping, is_count, is_list_of, is_number,
                     is_str, is_string_map, json_safe, merge_lineage, open_regular_file,
                     parse_json_bytes, put_if_set, read_top_level_json, set_package,
                     short_repr, training_lineage)

MAX_FILES = 10_000
MAX_SAFETENSORS_HEADER = 100 << 20
MAX_LISTED_PICKLES = 20
PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
PICKLE_PROTO_OPCODE = 0x80
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json",
                "test_results.json", "predict_results.json")  # later ones win


def extract_facts(src_dir: str) -> tuple[dict, list[str]]:
    """Facts from the checkpoint directory `src_dir` and the warnings met on the way."""
    warnings: list[str] = []
    facts: dict = {}
    try:
        files = list_regular_files(src_dir, warnings)
        extracted = extract_all(src_dir, files, facts, warnings)
        if extracted:
            facts["extracted"] = extracted
    except Exception as exc:  # last resort: the contract is to never raise
        warnings.append(f"{src_dir}: unexpected error ({exc!r}): extraction stopped")
    return facts, warnings


def extract_all(src_dir: str, files: list[str], facts: dict, warnings: list[str]) -> dict:
    extracted: dict = {}
    safetensors = {}
    pickles = {}
    for rel in files:
        lower = rel.lower()
        if lower.endswith(".safetensors"):
            found = guarded(rel, warnings, read_safetensors_header, src_dir, rel, warnings)
            if found is not None:
                safetensors[rel] = found
        elif lower.endswith(PICKLED_SUFFIXES):
            pickles[rel] = guarded(rel, warnings, identify_pickled_file, src_dir, rel, warnings) \
                or {"format": "unknown"}
    if safetensors:
        extracted["safetensors"] = safetensors
    top_level = {rel for rel in files if "/" not in rel}
    for name, add_facts in TOP_LEVEL_JSON.items():
        if name in top_level:
            guarded(name, warnings, add_facts, src_dir, facts, extracted, warnings)
    add_training_args_bin(src_dir, top_level, facts, extracted, warnings)
    add_pickled_checkpoint(src_dir, top_level, facts, extracted, warnings)
    add_result_files(src_dir, top_level, facts, extracted, warnings)
    if pickles:
        extracted["pickles"] = pickles
    return extracted


def guarded(label: str, warnings: list[str], extractor, *args):
    """Run one extractor; a SkipField or any other error becomes a warning and None."""
    try:
        return extractor(*args)
    except SkipField as exc:
        warnings.append(f"{label}: {exc}: skipped")
    except OSError as exc:
        warnings.append(f"{label}: cannot be read ({exc.strerror or exc}): skipped")
    except Exception as exc:
        warnings.append(f"{label}: unexpected error ({exc!r}): skipped")
    return None


# -- walking -------------------------------------------------------------------------------

def list_regular_files(src_dir: str, warnings: list[str]) -> list[str]:
    """Relative '/'-separated paths of the regular files under src_dir, sorted.

    Symlinks (to files or directories) and names starting with '.' are left out."""
    found: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for entry in scan_dir(src_dir, rel_dir, warnings):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(rel)
            elif entry.is_file(follow_symlinks=False):
                if len(found) == MAX_FILES:
                    warnings.append(f"{src_dir}: more than {MAX_FILES} files; "
                                    "only the first ones were examined")
                    return sorted(found)
                found.append(rel)
    return sorted(found)


def scan_dir(src_dir: str, rel_dir: str, warnings: list[str]) -> list[os.DirEntry]:
    try:
        with os.scandir(os.path.join(src_dir, rel_dir)) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        warnings.append(f"{rel_dir or src_dir}: directory cannot be listed "
                        f"({exc.strerror or exc}): skipped")
        return []


def read_exactly(f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise SkipField(f"file ended after {len(data)} of {size} expected bytes")
    return data


# -- safetensors -----------------------------------------------------------------------------

def read_safetensors_header(src_dir: str, rel: str, warnings: list[str]) -> dict:
    f, size = open_regular_file(src_dir, rel)
    with f:
        if size < 8:
            raise SkipField(f"truncated safetensors file ({size} bytes, no header length)")
        (header_len,) = struct.unpack("<Q", read_exactly(f, 8))
        if header_len > MAX_SAFETENSORS_HEADER:
            raise SkipField(f"safetensors header of {header_len} bytes is over "
                            f"{MAX_SAFETENSORS_HEADER >> 20} MiB")
        if header_len > size - 8:
            raise SkipField(f"safetensors header length {header_len} is larger than the "
                            f"file ({size} bytes)")
        header = parse_json_bytes(read_exactly(f, header_len),
                                  "safetensors header is not valid JSON")
    if not isinstance(header, dict):
        raise SkipField("safetensors header is not a JSON object")
    return summarize_safetensors_header(header, rel, warnings)


def summarize_safetensors_header(header: dict, rel: str, warnings: list[str]) -> dict:
    summary: dict = {"tensors": 0, "parameters": 0, "dtypes": {}}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = validated_tensor_entry(name, info)
        summary["tensors"] += 1
        summary["parameters"] += math.prod(shape)
        summary["dtypes"][dtype] = summary["dtypes"].get(dtype, 0) + 1
    metadata = header.get("__metadata__")
    if metadata is not None:
        if is_string_map(metadata):
            summary["metadata"] = {json_safe(k): json_safe(v) for k, v in metadata.items()}
        else:
            warnings.append(f"{rel}: __metadata__ is not a map of strings: ignored")
    return summary


def validated_tensor_entry(name: str, info) -> tuple[str, list[int]]:
    label = f"tensor {json_safe(name)!r}"
    if not isinstance(info, dict):
        raise SkipField(f"{label} in the safetensors header is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise SkipField(f"{label} has no string dtype")
    if not is_list_of(shape, is_count):
        raise SkipField(f"{label} has an invalid shape")
    if not (is_list_of(offsets, is_count) and len(offsets) == 2 and offsets[0] <= offsets[1]):
        raise SkipField(f"{label} has invalid data_offsets")
    return json_safe(dtype), shape


# -- pickled files ---------------------------------------------------------------------------

def identify_pickled_file(src_dir: str, rel: str, warnings: list[str]) -> dict:
    """The container format of a torch/pickle file, from its zip directory or first bytes."""
    f, _size = open_regular_file(src_dir, rel)
    with f:
        if zipfile.is_zipfile(f):
            return describe_zip(f, rel, warnings)
        f.seek(0)
        head = f.read(2)
    if len(head) == 2 and head[0] == PICKLE_PROTO_OPCODE and 2 <= head[1] <= 5:
        return {"format": "pickle", "protocol": head[1]}
    return {"format": "unknown"}


def describe_zip(f, rel: str, warnings: list[str]) -> dict:
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        warnings.append(f"{rel}: looks like a zip file but its directory is unreadable "
                        f"({exc}): format unknown")
        return {"format": "unknown"}
    inner_pickles = [json_safe(n) for n in names if n.endswith(".pkl")]
    return {"format": "torch-zip" if inner_pickles else "zip", "entries": len(names),
            "pickles": inner_pickles[:MAX_LISTED_PICKLES]}


# -- JSON files at the top level -------------------------------------------------------------

def load_top_level_json(src_dir: str, name: str, warnings: list[str]) -> dict | None:
    return guarded(name, warnings, read_top_level_json, src_dir, name)


# config.json

def add_config(src_dir: str, facts: dict, extracted: dict, warnings: list[str]) -> None:
    doc = load_top_level_json(src_dir, "config.json", warnings)
    if doc is None:
        return
    fields = FieldReader(doc, "config.json", warnings)
    summary: dict = {"path": "config.json"}
    architectures = fields.typed("architectures", lambda v: is_list_of(v, is_str),
                                 "a list of strings")
    if architectures is not None:
        summary["architectures"] = [json_safe(a) for a in architectures]
    for key in ("model_type", "transformers_version"):
        value = fields.string(key)
        if value is not None:
            summary[key] = value
    extracted["config"] = summary
    if "transformers_version" in summary:
        set_package(facts, "transformers", summary["transformers_version"])


# trainer_state.json

def add_trainer_state(src_dir: str, facts: dict, extracted: dict, warnings: list[str]) -> None:
    doc = load_top_level_json(src_dir, "trainer_state.json", warnings)
    if doc is None:
        return
    fields = FieldReader(doc, "trainer_state.json", warnings)
    summary: dict = {"path": "trainer_state.json"}
    put_if_set(summary, "global_step", fields.integer("global_step"))
    put_if_set(summary, "epoch", fields.number("epoch"))
    put_if_set(summary, "max_steps", fields.integer("max_steps"))
    put_if_set(summary, "best_metric", fields.number("best_metric"))
    put_if_set(summary, "best_model_checkpoint", fields.string("best_model_checkpoint"))
    summary.update(summarize_log_history(fields))
    extracted["trainer_state"] = summary
    put_if_set(facts, "step", summary.get("global_step"))
    put_if_set(facts, "epoch", summary.get("epoch"))
    metrics = {}
    put_if_set(metrics, "loss", summary.get("last_loss"))
    metrics.update(summary.get("last_eval", {}))
    if metrics:
        facts.setdefault("metrics", {}).update(metrics)


def summarize_log_history(fields: FieldReader) -> dict:
    history = fields.typed("log_history", lambda v: isinstance(v, list), "a list")
    if history is None:
        return {}
    entries = [e for e in history if isinstance(e, dict)]
    if len(entries) != len(history):
        fields.warn(f"{len(history) - len(entries)} log_history entries are not objects: skipped")
    summary: dict = {"log_entries": len(history)}
    last_train = next((e for e in reversed(entries) if is_number(e.get("loss"))), None)
    if last_train is not None:
        loss = last_train["loss"]
        if math.isfinite(loss):
            summary["last_loss"] = float(loss)
        else:
            fields.warn(f"log_history: last loss is not finite ({loss}): skipped")
    last_eval = next((e for e in reversed(entries) if any(map(is_eval_key, e))), None)
    if last_eval is not None:
        metrics = numeric_metrics(last_eval, is_eval_key, fields, "log_history: ")
        if metrics:
            summary["last_eval"] = metrics
    return summary


def is_eval_key(key: str) -> bool:
    return key.startswith("eval_")


def numeric_metrics(entry: dict, wanted, fields: FieldReader, where: str = "") -> dict:
    """The finite numbers of `entry` whose keys `wanted` accepts, bookkeeping (runtimes,
    throughputs) left out; each value that is not a finite number is a warning."""
    metrics = {}
    for key, value in entry.items():
        if not wanted(key) or is_bookkeeping(key):
            continue
        if not is_number(value):
            fields.warn(f"{where}{json_safe(key)} is not a number ({short_repr(value)}): skipped")
        elif not math.isfinite(value):
            fields.warn(f"{where}{json_safe(key)} is not finite ({value}): skipped")
        else:
            metrics[json_safe(key)] = float(value)
    return metrics


# training_args.json

def add_training_args(src_dir: str, facts: dict, extracted: dict, warnings: list[str]) -> None:
    doc = load_top_level_json(src_dir, "training_args.json", warnings)
    if doc is None:
        return
    extracted["training_args"] = {"path": "training_args.json", "keys": len(doc)}
    merge_lineage(facts, training_lineage(FieldReader(doc, "training_args.json", warnings)))


TOP_LEVEL_JSON = {
    "config.json": add_config,
    "trainer_state.json": add_trainer_state,
    "training_args.json": add_training_args,
}


# -- pickled files at the top level: training_args.bin, a Lightning or standalone checkpoint ---

def add_training_args_bin(src_dir: str, top_level: set, facts: dict, extracted: dict,
                          warnings: list[str]) -> None:
    """After training_args.json (TOP_LEVEL_JSON), so that the .bin wins key by key."""
    name = "training_args.bin"
    if name in top_level:
        guarded(name, warnings, extract_pickled.add_training_args_bin, src_dir, name, facts,
                extracted, warnings)


def add_pickled_checkpoint(src_dir: str, top_level: set, facts: dict, extracted: dict,
                           warnings: list[str]) -> None:
    """The one `*.ckpt` at the top level (a Lightning checkpoint); else, when nothing
    gave step or epoch, the one standalone `*.pt`/`*.pth`. Several are ambiguous: none
    is read."""
    ckpts = sorted(n for n in top_level if n.lower().endswith(".ckpt"))
    if len(ckpts) > 1:
        warnings.append(f"{len(ckpts)} .ckpt files at the top level ({', '.join(ckpts[:4])}"
                        f"{', …' if len(ckpts) > 4 else ''}): none read for step, epoch or "
                        "metrics")
    elif ckpts:
        guarded(ckpts[0], warnings, extract_pickled.add_lightning_checkpoint, src_dir,
                ckpts[0], facts, extracted, warnings)
    elif "step" not in facts and "epoch" not in facts:
        standalone = sorted(n for n in top_level if extract_pickled.is_standalone_torch_file(n))
        if len(standalone) == 1:
            guarded(standalone[0], warnings, extract_pickled.add_torch_progress, src_dir,
                    standalone[0], facts, extracted, warnings)


def first_set(*values):
    return next((value for value in values if value is not None), None)


# -- Hugging Face result files ----------------------------------------------------------------

def add_result_files(src_dir: str, top_level: set, facts: dict, extracted: dict,
                     warnings: list[str]) -> None:
    """metrics from `*_results.json` (what Trainer.save_metrics writes at the end of a
    run): they override the metrics read before them; `epoch` when nothing gave one."""
    metrics: dict = {}
    epoch = None
    used = []
    for name in RESULT_FILES:
        doc = load_top_level_json(src_dir, name, warnings) if name in top_level else None
        if doc is None:
            continue
        used.append(name)
        fields = FieldReader(doc, name, warnings)
        metrics.update(numeric_metrics(doc, lambda key: key != "epoch", fields))
        epoch = first_set(fields.number("epoch"), epoch)
    if used:
        extracted["results"] = {"paths": used}
    if metrics:
        facts.setdefault("metrics", {}).update(metrics)
    if epoch is not None:
        facts.setdefault("epoch", epoch)
