"""Facts read from the known files of a checkpoint directory (Hugging Face Trainer layout).

`extract_facts(src_dir)` returns a partial sidecar document (step, epoch, metrics, lineage
and an `extracted` section per file kind) plus human-readable warnings. The directory's
content is untrusted: nothing here raises because of it, nothing is unpickled, and
symlinks are never followed. Each malformed field is skipped with a warning while the
rest is still extracted.

Read: `*.safetensors` headers (any depth); `config.json`, `trainer_state.json` and
`training_args.json` (top level only); the zip central directory or first bytes of
pickled files (`*.pt *.pth *.bin *.ckpt *.pkl`, any depth).
"""
import json
import math
import os
import stat
import struct
import zipfile

MAX_FILES = 10_000
MAX_JSON_BYTES = 16 << 20
MAX_SAFETENSORS_HEADER = 100 << 20
MAX_LISTED_PICKLES = 20
PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
EVAL_BOOKKEEPING = frozenset({"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})
SEED_KEYS = ("seed", "data_seed")
PICKLE_PROTO_OPCODE = 0x80


class SkipField(Exception):
    """A field or file that cannot be used; the message is the warning (without the path)."""


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


def open_regular_file(src_dir: str, rel: str):
    """Open rel for reading without following a symlink; (file object, size)."""
    fd = os.open(os.path.join(src_dir, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SkipField("not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


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

def read_json_file(src_dir: str, name: str):
    """The parsed JSON of top-level file `name` (SkipField if too large or invalid)."""
    f, size = open_regular_file(src_dir, name)
    with f:
        if size > MAX_JSON_BYTES:
            raise SkipField(f"file is {size} bytes; JSON files over {MAX_JSON_BYTES >> 20} MiB "
                            "are not read")
        data = f.read(MAX_JSON_BYTES + 1)
    return parse_json_bytes(data, "not valid JSON")


def read_top_level_json(src_dir: str, name: str) -> dict:
    doc = read_json_file(src_dir, name)
    if not isinstance(doc, dict):
        raise SkipField("top level is not a JSON object")
    return doc


def parse_json_bytes(data: bytes, what: str):
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise SkipField(f"{what} (line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise SkipField(f"{what} (not UTF-8 text)") from None
    except RecursionError:
        raise SkipField(f"{what} (nested too deeply)") from None


def load_top_level_json(src_dir: str, name: str, warnings: list[str]) -> dict | None:
    return guarded(name, warnings, read_top_level_json, src_dir, name)


class FieldReader:
    """Typed access to the fields of one JSON document; a wrong type becomes a warning."""

    def __init__(self, doc: dict, file_name: str, warnings: list[str]):
        self.doc, self.file_name, self.warnings = doc, file_name, warnings

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.file_name}: {text}")

    def typed(self, key: str, check, kind: str):
        value = self.doc.get(key)
        if value is None:
            return None
        if not check(value):
            self.warn(f"{key} is not {kind} ({short_repr(value)}): skipped")
            return None
        return value

    def integer(self, key: str) -> int | None:
        return self.typed(key, is_int, "an integer")

    def number(self, key: str) -> float | None:
        value = self.typed(key, is_number, "a number")
        if value is not None and not math.isfinite(value):
            self.warn(f"{key} is not finite ({value}): skipped")
            return None
        return None if value is None else float(value)

    def string(self, key: str) -> str | None:
        value = self.typed(key, lambda v: isinstance(v, str), "a string")
        return None if value is None else json_safe(value)


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
        lineage = facts.setdefault("lineage", {})
        packages = lineage.setdefault("environment", {}).setdefault("packages", {})
        packages["transformers"] = summary["transformers_version"]


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
        facts["metrics"] = metrics


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
    last_eval = next((e for e in reversed(entries) if has_eval_key(e)), None)
    if last_eval is not None:
        metrics = eval_metrics(last_eval, fields)
        if metrics:
            summary["last_eval"] = metrics
    return summary


def has_eval_key(entry: dict) -> bool:
    return any(key.startswith("eval_") for key in entry)


def eval_metrics(entry: dict, fields: FieldReader) -> dict:
    metrics = {}
    for key, value in entry.items():
        if not key.startswith("eval_") or key in EVAL_BOOKKEEPING:
            continue
        if not is_number(value):
            fields.warn(f"log_history: {json_safe(key)} is not a number "
                        f"({short_repr(value)}): skipped")
        elif not math.isfinite(value):
            fields.warn(f"log_history: {json_safe(key)} is not finite ({value}): skipped")
        else:
            metrics[json_safe(key)] = float(value)
    return metrics


# training_args.json

def add_training_args(src_dir: str, facts: dict, extracted: dict, warnings: list[str]) -> None:
    doc = load_top_level_json(src_dir, "training_args.json", warnings)
    if doc is None:
        return
    fields = FieldReader(doc, "training_args.json", warnings)
    extracted["training_args"] = {"path": "training_args.json", "keys": len(doc)}
    hyperparameters = {}
    for key, value in doc.items():
        if key in SEED_KEYS or not (is_scalar(value) or is_list_of(value, is_scalar)):
            continue  # nested structures are not hyperparameters
        if is_finite_scalar(value) or is_list_of(value, is_finite_scalar):
            hyperparameters[json_safe(key)] = json_safe_value(value)
        else:
            fields.warn(f"{json_safe(key)} holds a non-finite number: skipped")
    seeds = {}
    for key in SEED_KEYS:
        put_if_set(seeds, key, fields.integer(key))
    lineage = {}
    if hyperparameters:
        lineage["hyperparameters"] = hyperparameters
    if seeds:
        lineage["seeds"] = seeds
    if lineage:
        facts.setdefault("lineage", {}).update(lineage)


TOP_LEVEL_JSON = {
    "config.json": add_config,
    "trainer_state.json": add_trainer_state,
    "training_args.json": add_training_args,
}


# -- small helpers -----------------------------------------------------------------------------

def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value) -> bool:
    return is_int(value) and value >= 0


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_str(value) -> bool:
    return isinstance(value, str)


def is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_finite_scalar(value) -> bool:
    return is_scalar(value) and not (isinstance(value, float) and not math.isfinite(value))


def is_list_of(value, check) -> bool:
    return isinstance(value, list) and all(check(item) for item in value)


def is_string_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def put_if_set(target: dict, key: str, value) -> None:
    if value is not None:
        target[key] = value


def json_safe(text: str) -> str:
    """text with lone surrogates (possible from JSON '\\ud800' escapes) made encodable."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def json_safe_value(value):
    if isinstance(value, str):
        return json_safe(value)
    if isinstance(value, list):
        return [json_safe_value(v) for v in value]
    return value


def short_repr(value, limit: int = 40) -> str:
    text = json_safe(repr(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."
