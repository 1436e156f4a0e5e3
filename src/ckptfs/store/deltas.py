"""Delta bases for an ingest: which stored version a new version's tensors are
XOR-delta coded against, which of its chunks hold the same tensor blocks, and the
keyframe (non-delta chunk) a delta is taken against.

Given the catalog (the parent version and its file entries), the reader (the parent's
safetensors headers, keyframes) and the store's settings (delta coding on or off, the
tensor block size).
"""
from .chunking import parse_safetensors_header, safetensors_header_size
from .codec import delta_base_id
from .errors import IntegrityError, NotFoundError
from .parentage import is_checkpoint_kind


class DeltaBases:
    def __init__(self, catalog, reader, config):
        self.catalog = catalog
        self.reader = reader
        self.config = config

    def parent_for(self, project: str, run: str, preferred: dict | None = None) -> dict | None:
        """The version whose tensors are the delta bases of a new version of the run:
        `preferred` ({project, run, version}: the version its writer loaded its weights
        from) if it is a stored checkpoint, else the run's newest checkpoint."""
        if not self.config.compression.delta:
            return None
        catalog = self.catalog
        if preferred:
            doc = catalog.catalog_document(preferred["project"], preferred["run"],
                                           preferred["version"])
            if doc is not None and is_checkpoint_kind(doc):
                return catalog.version_record(doc["project"], doc["run"], doc["version"])
        newest = catalog.newest_checkpoint(project, run)
        return catalog.version_record(project, run, newest["version"]) if newest else None

    def bases(self, parent: dict, path: str, layout) -> dict[int, bytes]:
        """{offset in the new file: chunk id of the same tensor block in the parent file}."""
        try:
            old = self.catalog.entry(parent["project"], parent["run"], parent["version"], path)
        except NotFoundError:
            return {}
        if old["type"] != "file":
            return {}
        try:
            head_size = safetensors_header_size(self.reader.read_range(old, 0, 8))
            old_layout = parse_safetensors_header(self.reader.read_range(old, 0, head_size),
                                                  old["size"]) if head_size else None
        except IntegrityError:
            return {}
        if old_layout is None:
            return {}
        old_chunks, pos = {}, 0
        for chunk_hex, length in old["chunks"]:
            old_chunks[pos] = (bytes.fromhex(chunk_hex), length)
            pos += length
        block = self.config.chunking.tensor_block
        bases = {}
        for name, (start, end, dtype) in layout.tensors.items():
            old_t = old_layout.tensors.get(name)
            if old_t is None or old_t[2] != dtype or old_t[1] - old_t[0] != end - start:
                continue
            for k in range(0, end - start, block):
                found = old_chunks.get(old_t[0] + k)
                if found and found[1] == min(block, end - start - k):
                    bases[start + k] = found[0]
        return bases

    def keyframe(self, chunk_id: bytes) -> tuple[bytes, bytes] | None:
        """(id, raw bytes) of the non-delta chunk a delta against `chunk_id` should use."""
        try:
            record = self.reader.read_record(chunk_id)
            base_id = delta_base_id(record.codec, record.payload)
            key = base_id or chunk_id
            return key, self.reader.read_chunk(key, cache=False)  # each keyframe serves one delta
        except IntegrityError:
            return None
