"""Writing records into new packs: what an ingest or a repair appends its records to.

A `PackSink` owns the new packs of one writer: it takes pack ids from the index's
counter, starts a new pack when one reaches the target size, and encrypts every payload
(after compression) in an encrypted store: every record written goes through
`PackSink.append`. `PackSinks` makes them for one store (it holds the cipher).

A pack that is full is closed (its end record, fsync; on an object store, its upload)
on a thread of its own while the writer goes on into the next one; `close` waits for
those, and fails if one failed.
"""
from concurrent.futures import ThreadPoolExecutor

from .backend import Backend
from .index import Location
from .pack import FLAG_ENCRYPTED, PackWriter


class PackSink:
    def __init__(self, backend: Backend, allocate_pack_id, cipher, target_size: int | None):
        self.backend = backend
        self.allocate_pack_id = allocate_pack_id
        self.cipher = cipher
        self.target_size = target_size   # None: one pack, however large
        self.writers: list[PackWriter] = []
        self.on_new_pack = None   # told the id of each pack it opens
        self._closing = []        # closes of full packs under way (futures)
        self._closer: ThreadPoolExecutor | None = None

    @property
    def pack_ids(self) -> list[int]:
        return [w.pack_id for w in self.writers]

    def append(self, kind: int, codec_id: int, record_id: bytes, raw_len: int,
               payload) -> Location:
        flags = 0
        if self.cipher is not None:
            payload = self.cipher.encrypt(kind, codec_id, raw_len, record_id, payload)
            flags = FLAG_ENCRYPTED
        w = self._writer()
        offset, length = w.append(kind, codec_id, record_id, raw_len, payload, flags)
        return Location(w.pack_id, offset, length, raw_len)

    def _writer(self) -> PackWriter:
        w = self.writers[-1] if self.writers else None
        # A closed last pack: a commit that lost its journal seq writes its manifest
        # again (its parent may have changed), into a pack of its own.
        if w is None or w.closed or (self.target_size is not None
                                     and w.size >= self.target_size):
            if w is not None and not w.closed:
                self._close_behind(w)
            w = PackWriter(self.backend, self.allocate_pack_id())
            self.writers.append(w)
            if self.on_new_pack:
                self.on_new_pack(w.pack_id)
        return w

    def _close_behind(self, writer: PackWriter) -> None:
        if self._closer is None:
            self._closer = ThreadPoolExecutor(1, thread_name_prefix="ckptfs-pack-close")
        self._closing.append(self._closer.submit(writer.close))

    def _closed_behind(self) -> None:
        """Wait for the closes under way (the first failure raised)."""
        closing, self._closing = self._closing, []
        errors = [f.exception() for f in closing]
        if self._closer is not None:
            self._closer.shutdown()
            self._closer = None
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        """Close every pack (fsync): their records are durable."""
        self._closed_behind()
        for w in self.writers:
            w.close()

    def abort(self) -> None:
        """Delete every pack: nothing refers to them."""
        try:
            self._closed_behind()
        except Exception:
            pass  # deleted anyway
        for w in self.writers:
            w.abort()
        self.writers.clear()


class PackSinks:
    """Makes the PackSinks of one store."""

    def __init__(self, backend: Backend, allocate_pack_id, cipher, target_size: int):
        self.backend = backend
        self.allocate_pack_id = allocate_pack_id
        self.cipher = cipher
        self.target_size = target_size

    def __call__(self, single_pack: bool = False) -> PackSink:
        return PackSink(self.backend, self.allocate_pack_id, self.cipher,
                        None if single_pack else self.target_size)
