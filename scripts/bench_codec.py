#!/usr/bin/env python3
"""Codec benchmark: what each file of a checkpoint corpus is stored as, and how fast it
decodes, for ckptfs's codec now and before, ZipNN and zstd -3, in one run.

    scripts/bench_codec.py [--corpus DIR] [--all] [--file REL ...] [--repeat N]
                           [--old-rev REV] [--no-zipnn] [--no-delta] [--json PATH]

The corpus is what ../shared/bench/make_corpus.py writes (minilm/full-ft/checkpoint-1..4,
minilm/partial-ft/checkpoint-1..4, minilm/export/{fp32,bf16}); --corpus names it or its
project directory (default ./bench-out/corpus). Without --all or --file, one file of each
kind is measured: fp32 weights and optimizer states of the first checkpoint of each run,
and both exports; --all takes every file of 1 MB or more.

For each file, in this process, one after the other:

  new      this tree's chunking and codec (store/chunking.py, store/codec.py): the file
           cut as an import cuts it, each chunk encoded as the ingest encodes it
  old      the chunking and codec at --old-rev (default 21b6548, the codec the issue's
           figures are of), loaded from git: the same file as that store cut and coded it
  ZipNN    zipnn.ZipNN(bytearray_dtype=the file's float type, threads=1) on the whole
           file (pip install zipnn; --no-zipnn or not installed: left out)
  zstd -3  the whole file, one frame, level 3

ratio is stored bytes / file bytes (chunk payloads only: no pack headers, no index);
decode is MB of raw output per CPU second (time.process_time, so other processes on a
shared machine slow it less than a wall clock; every thread of this process counts, so a
multi-threaded decoder is not flattered), the best of --repeat runs (default 3); every
decoded chunk is kept until the file is done, as a read's cache keeps it, so each
decode writes fresh memory (as ZipNN's and zstd's whole-file outputs are).

Unless --no-delta, the delta codecs are measured too: each checkpoint-2 weights and
optimizer file against checkpoint-1's, block by block as an import pairs them (the same
tensor's or zip entry's block at the same offset; the old chunking cut a zip by content,
so it had no pairs there), old XOR_DELTA against new FLOAT_DELTA, each block kept as a
delta only if that is smaller than its plain encoding; blocks equal to the base are left
out (deduplicated). Decode includes applying the base (already decoded, as a cached
keyframe would be).

MB are 10^6 bytes. The run prints a table and writes JSON (--json, default
bench-out/bench_codec.json) with the git commit of the code measured.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from ckptfs.store import codec as new_codec  # noqa: E402
from ckptfs.store import chunking as new_chunking  # noqa: E402
from ckptfs.store.config import ChunkingSettings  # noqa: E402

OLD_REV = "21b6548"
DEFAULT_FILES = ["full-ft/checkpoint-1/model.safetensors", "full-ft/checkpoint-1/optimizer.pt",
                 "partial-ft/checkpoint-1/model.safetensors",
                 "partial-ft/checkpoint-1/optimizer.pt",
                 "export/fp32/model.safetensors", "export/bf16/model.safetensors"]
DELTA_PAIRS = [(f"{run}/checkpoint-2/{name}", f"{run}/checkpoint-1/{name}")
               for run in ("full-ft", "partial-ft") for name in ("model.safetensors", "optimizer.pt")]
ZIPNN_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def load_module_at(rev: str, path: str, name: str):
    """The module `path` as it was at git revision `rev`, imported as ckptfs.store.<name>
    (so its relative imports find this tree's modules)."""
    source = subprocess.run(["git", "-C", REPO, "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"ckptfs.store.{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "ckptfs.store"
    sys.modules[spec.name] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


class Codec:
    """One chunking + codec pair: cuts a file and encodes its chunks as an ingest does."""

    def __init__(self, label: str, chunking, codec):
        self.label, self.chunking, self.codec = label, chunking, codec
        s = ChunkingSettings()
        self.settings = s
        self.chunker = chunking.Chunker(s.min_size, s.avg_size, s.max_size)

    def chunks(self, path: str):
        """(segment, offset, bytes) of the file's chunks."""
        fd = os.open(path, os.O_RDONLY)
        try:
            reader = self.chunking.FileReader(fd, path, os.fstat(fd).st_size)
            layout = reader.tensor_layout()
            return list(reader.chunks(self.chunker, layout, self.settings.tensor_block))
        finally:
            os.close(fd)

    def encode(self, segment, data) -> tuple[int, bytes]:
        encoder = self.codec.Encoder()
        dtype = getattr(segment, "dtype", None)
        if dtype is not None:
            return encoder.encode(data, segment.width, dtype)
        return encoder.encode(data, segment.width)

    def encode_delta(self, segment, data, base) -> tuple[int, bytes]:
        encoder = self.codec.Encoder()
        dtype = getattr(segment, "dtype", None)
        width = segment.width or 4
        delta = (encoder.encode_delta(data, base, b"B" * 32, width, dtype) if dtype is not None
                 else encoder.encode_delta(data, base, b"B" * 32, width))
        plain = self.encode(segment, data)
        return delta if delta is not None and len(delta[1]) < len(plain[1]) else plain

    def decode_seconds(self, records, repeat: int) -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            # Every chunk's output is kept, as the reader's cache keeps it: each decode
            # writes fresh memory (reused memory would flatter the numpy codecs).
            kept = [self.codec.decode(codec_id, payload, raw_len, lambda _id, b=base: b)
                    for codec_id, payload, raw_len, base in records]
            best = min(best, time.process_time() - start)
            del kept
        return best


def measure_codec(codec: Codec, path: str, repeat: int) -> dict:
    size = os.path.getsize(path)
    records, kinds = [], {}
    for segment, _offset, data in codec.chunks(path):
        codec_id, payload = codec.encode(segment, data)
        records.append((codec_id, payload, len(data), None))
        name = codec.codec.CODEC_NAMES.get(codec_id, str(codec_id))
        kinds[name] = kinds.get(name, 0) + len(data)
    stored = sum(len(p) for _, p, _, _ in records)
    seconds = codec.decode_seconds(records, repeat)
    return {"ratio": stored / size, "decode_mb_s": size / seconds / 1e6,
            "raw_bytes_by_codec": kinds}


def measure_delta(codec: Codec, path: str, base_path: str, repeat: int) -> dict:
    """Each block of `path` coded against the same block of `base_path` (same tensor,
    same offset), as the ingest pairs them."""
    base_blocks = {}
    for segment, offset, data in codec.chunks(base_path):
        if segment.tensor is not None:
            base_blocks[(segment.tensor, offset - segment.offset)] = data
    size = os.path.getsize(path)
    records, stored, delta_bytes = [], 0, 0
    for segment, offset, data in codec.chunks(path):
        base = base_blocks.get((segment.tensor, offset - segment.offset)) \
            if segment.tensor is not None else None
        if base is not None and base == data:
            continue  # deduplicated: stored once already
        if base is not None and len(base) == len(data):
            codec_id, payload = codec.encode_delta(segment, data, base)
        else:
            codec_id, payload = codec.encode(segment, data)
        if codec_id in (3, 5):
            delta_bytes += len(data)
        records.append((codec_id, payload, len(data), base))
        stored += len(payload)
    new_bytes = sum(r[2] for r in records)
    seconds = codec.decode_seconds(records, repeat)
    return {"ratio": stored / size, "new_bytes": new_bytes, "delta_bytes": delta_bytes,
            "decode_mb_s": new_bytes / seconds / 1e6 if seconds else None}


def file_float_type(path: str) -> str:
    """The float type most of the file's bytes are (F32 for anything not safetensors)."""
    with open(path, "rb") as f:
        reader = new_chunking.FileReader(f.fileno(), path, os.fstat(f.fileno()).st_size)
        layout = reader.tensor_layout()
    if layout is None:
        return "F32"
    by_type = {}
    for start, end, dtype in layout.tensors.values():
        by_type[dtype] = by_type.get(dtype, 0) + end - start
    return max(by_type, key=by_type.get)


def measure_zipnn(path: str, repeat: int) -> dict | None:
    try:
        import zipnn
    except ImportError:
        return None
    dtype = ZIPNN_DTYPES.get(file_float_type(path), "float32")
    data = open(path, "rb").read()
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    packed = z.compress(bytearray(data))  # ZipNN 0.5.4 garbles what `bytes` it is given
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        out = z.decompress(packed)
        best = min(best, time.process_time() - start)
    if bytes(out) != data:
        raise SystemExit(f"ZipNN did not give {path} back")
    return {"ratio": len(packed) / len(data), "decode_mb_s": len(data) / best / 1e6,
            "dtype": dtype, "version": getattr(zipnn, "__version__", "?")}


def measure_zstd(path: str, repeat: int) -> dict:
    import zstandard
    data = open(path, "rb").read()
    packed = zstandard.ZstdCompressor(level=3).compress(data)
    d = zstandard.ZstdDecompressor()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        d.decompress(packed)
        best = min(best, time.process_time() - start)
    return {"ratio": len(packed) / len(data), "decode_mb_s": len(data) / best / 1e6}


def find_files(corpus: str, a) -> list[str]:
    if a.file:
        return a.file
    if not a.all:
        return [f for f in DEFAULT_FILES if os.path.exists(os.path.join(corpus, f))]
    found = []
    for dirpath, _dirs, names in os.walk(corpus):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.getsize(full) >= 1_000_000:
                found.append(os.path.relpath(full, corpus))
    return sorted(found)


def corpus_dir(arg: str | None) -> str:
    corpus = arg or os.path.join(REPO, "bench-out", "corpus")
    if os.path.isdir(os.path.join(corpus, "minilm")):
        corpus = os.path.join(corpus, "minilm")
    if not os.path.isdir(corpus):
        raise SystemExit(f"bench_codec: no corpus at {corpus}: build it with "
                         "../shared/bench/make_corpus.py or name it with --corpus")
    return corpus


def git_commit() -> str:
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=10", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    return head + (" (uncommitted changes)" if dirty else "")


def cell(m: dict | None) -> str:
    if m is None:
        return f"{'-':>7} {'-':>7}"
    return f"{m['ratio']:7.4f} {m['decode_mb_s']:7.0f}"


def print_table(rows: list[dict], columns: list[str]):
    print()
    head = f"{'file':46} {'MB':>7}  " + "  ".join(f"{c:^15}" for c in columns)
    print(head)
    print(f"{'':46} {'':>7}  " + "  ".join(f"{'ratio':>7} {'MB/s':>7}" for _ in columns))
    for row in rows:
        print(f"{row['file']:46} {row['size'] / 1e6:7.1f}  "
              + "  ".join(cell(row.get(c)) for c in columns))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus")
    p.add_argument("--all", action="store_true", help="every file of 1 MB or more")
    p.add_argument("--file", action="append", help="a file (relative to the corpus)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--old-rev", default=OLD_REV)
    p.add_argument("--no-zipnn", action="store_true")
    p.add_argument("--no-delta", action="store_true")
    p.add_argument("--json", default=os.path.join(REPO, "bench-out", "bench_codec.json"))
    a = p.parse_args()
    corpus = corpus_dir(a.corpus)
    old = Codec("old", load_module_at(a.old_rev, "src/ckptfs/store/chunking.py", "_old_chunking"),
                load_module_at(a.old_rev, "src/ckptfs/store/codec.py", "_old_codec"))
    new = Codec("new", new_chunking, new_codec)
    rows = []
    for rel in find_files(corpus, a):
        path = os.path.join(corpus, rel)
        row = {"file": rel, "size": os.path.getsize(path)}
        row["old"] = measure_codec(old, path, a.repeat)
        row["new"] = measure_codec(new, path, a.repeat)
        row["ZipNN"] = None if a.no_zipnn else measure_zipnn(path, a.repeat)
        row["zstd -3"] = measure_zstd(path, a.repeat)
        rows.append(row)
        print(f"{rel}: " + ", ".join(f"{k} {v['ratio']:.4f}" for k, v in row.items()
                                      if isinstance(v, dict)), flush=True)
    deltas = []
    if not a.no_delta:
        for rel, base_rel in DELTA_PAIRS:
            path, base_path = os.path.join(corpus, rel), os.path.join(corpus, base_rel)
            if os.path.exists(path) and os.path.exists(base_path):
                deltas.append({"file": f"{rel} (delta)", "size": os.path.getsize(path),
                               "old": measure_delta(old, path, base_path, a.repeat),
                               "new": measure_delta(new, path, base_path, a.repeat)})
    commit = git_commit()
    print(f"\nckptfs code: {REPO} (git {commit}); old codec: git {a.old_rev}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("ratio: stored / raw bytes; MB/s: decode, MB of raw output per CPU second")
    print_table(rows, ["old", "new", "ZipNN", "zstd -3"])
    if deltas:
        print("\ndeltas against checkpoint-1 (ratio: stored / file bytes; blocks equal to the "
              "base left out)")
        print_table(deltas, ["old", "new"])
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"commit": commit, "old_rev": a.old_rev, "corpus": corpus, "files": rows,
                   "deltas": deltas, "repeat": a.repeat}, f, indent=1)
    print(f"\nJSON: {a.json}")


if __name__ == "__main__":
    main()
