"""Reading untrusted checkpoint files: opening one without following a symlink, JSON
within a size limit, typed fields of a parsed document, values fit for a sidecar.

Used by every extractor of meta/ (extract.py, extract_pickled.py, user.py): what a file
holds is never trusted, so a wrong type or size is a SkipField (the message is the
warning), never an exception that escapes.
"""
import json
import math
import os
import stat

from .provenance import looks_like_secret

MAX_JSON_BYTES = 16 << 20
SEED_KEYS = ("seed", "data_seed")
# Keys of run bookkeeping rather than results: durations, throughputs, sample counts
# (`eval_samples`), memory deltas (`train_mem_cpu_alloc_delta`); and `total_flos`.
BOOKKEEPING_SUFFIXES = ("_runtime", "_per_second", "_samples")


class SkipField(Exception):
    """A field or file that cannot be used; the message is the warning (without the path)."""


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


def is_bookkeeping(key: str) -> bool:
    return key == "total_flos" or key.endswith(BOOKKEEPING_SUFFIXES) or "_mem_" in key


# -- lineage from a training configuration ------------------------------------------------------

def training_lineage(fields: FieldReader, flatten: bool = False) -> dict:
    """`lineage` facts from the fields of a training configuration (training_args, a
    Lightning module's hyper-parameters): `hyperparameters`, every scalar or list of
    scalars, nested objects left out (or, with `flatten`, their entries under dotted
    keys: `optimizer.lr`); `seeds`, `seed` and `data_seed` when they are integers.
    Private fields (`_n_gpu`) and names that look like secrets (`hub_token`: the rule of
    provenance's environment variables) are never copied."""
    entries = flattened(fields.doc) if flatten else fields.doc.items()
    hyperparameters = {}
    for key, value in entries:
        if key in SEED_KEYS or key.startswith("_") or looks_like_secret(key):
            continue
        if not (is_scalar(value) or is_list_of(value, is_scalar)):
            continue  # nested structures are not hyperparameters
        if is_finite_scalar(value) or is_list_of(value, is_finite_scalar):
            hyperparameters[json_safe(key)] = json_safe_value(value)
        else:
            fields.warn(f"{json_safe(key)} holds a non-finite number: skipped")
    seeds: dict = {}
    for key in SEED_KEYS:
        put_if_set(seeds, key, fields.integer(key))
    lineage = {}
    if hyperparameters:
        lineage["hyperparameters"] = hyperparameters
    if seeds:
        lineage["seeds"] = seeds
    return lineage


def flattened(entries: dict, prefix: str = ""):
    """(dotted key, value) of every entry, nested dicts opened (placeholders of the
    pickle reader, whose keys start with `__`, are not)."""
    for key, value in entries.items():
        if isinstance(value, dict) and not is_placeholder(value):
            yield from flattened(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def is_placeholder(value) -> bool:
    """A dict that stands for something the pickle reader does not turn into values
    ({"__tensor__": …}, {"__call__": …})."""
    return isinstance(value, dict) and next(iter(value), "").startswith("__")


def merge_lineage(facts: dict, lineage: dict) -> None:
    """Add `lineage` to facts["lineage"]: its hyperparameters and seeds key by key (the
    new ones win)."""
    target = facts.setdefault("lineage", {})
    for part, values in lineage.items():
        target.setdefault(part, {}).update(values)


def set_package(facts: dict, package: str, version: str) -> None:
    """lineage.environment.packages[package] = version."""
    lineage = facts.setdefault("lineage", {})
    lineage.setdefault("environment", {}).setdefault("packages", {})[package] = version

