"""The negatives spool: JPEG files indexed by SQLite, bounded, crash-safe, kind to SD cards.

Layout of the spool directory::

    spool.db (+ -wal, -shm)   the index (SQLite, WAL)
    spool.lock                held (flock) by the one writer, the daemon
    samples/00000042.jpg      one JPEG per sample, named by sample id

Crash safety. A batch of samples is written as files first (temporary name, write, fsync,
rename), then the directory is fsynced, then ONE SQLite transaction adds their rows. So a row
never points at a partial file, and once the directory fsync is done the batch is durable *in
its files*: each file carries its full metadata (below). Start-up reconciles: rows whose file is
missing or of the wrong size (and, after an unclean stop, of the wrong sha256) are dropped;
intact files without a row -- a batch whose commit a crash cut short, or whose WAL tail a power
cut lost -- are indexed again; partial and temporary files are removed. Eviction removes files
before rows (so it never leaves an evicted file to be indexed again). Nothing that
:meth:`Spool.flush` reported committed is lost to kill -9 or a power cut.

Self-describing files. Each JPEG carries its sample's metadata as JSON in a COM segment (one
file, one write: no sidecar). If ``spool.db`` is unreadable or lost, it is moved aside as
``spool.db.corrupt-<time>`` and rebuilt from the intact files; a rebuilt spool gets a new
``spool_id`` (exported with every stream) so that feeder-sync knows to pull again from 0. Label
changes made after a sample was written live only in the index and are lost in a rebuild.

Sequence numbers. ``seq`` grows by one for every committed change a puller must see: a new
sample, or a new label on an old one (a reply after the frames were spooled). ``export --since
S`` streams rows with ``seq > S``; ``ack S`` marks them synced. Evicting the newest rows never
lets a seq be reused: the high-water mark is kept in the ``meta`` table.

Few, whole writes (the SD card). Per batch: one file write + fsync per sample, one directory
fsync, one WAL append. The WAL runs with ``synchronous=NORMAL``: batch commits are not fsynced
on their own, since the files make them durable already; this lets consecutive commits share
the WAL's dirty pages instead of rewriting a whole page each (an fsync per commit cost ~3-4 KiB
per commit more in the bench). Changes the files cannot restore -- labels, evictions, repairs
-- commit with ``synchronous=FULL``. 1 KiB pages keep a commit of a few ~250-byte rows small;
a checkpoint every ~2 MiB of WAL copies each changed page once. Figures:
``tools/bench/spool_bench.py``.

The package: :mod:`~feederd.spool.store` (:class:`Spool`: opening, closing, labels, readers),
:mod:`~feederd.spool.writer` (the queue, the batch writer, eviction),
:mod:`~feederd.spool.fileformat` (sample files: names, embedded metadata, durable writes, the
lock), :mod:`~feederd.spool.index` (SQLite schema, pragmas, rows), :mod:`~feederd.spool.repair`
(reconcile and rebuild) and :mod:`~feederd.spool.export` (the tar stream).
"""

from feederd.spool.export import MANIFEST_NAME
from feederd.spool.fileformat import (
    FORMAT,
    LOCK_NAME,
    MAX_FULL_PROBS,
    SAMPLES_DIR,
    embed_metadata,
    extract_metadata,
    sample_file,
)
from feederd.spool.index import DB_NAME, PAGE_SIZE, WAL_AUTOCHECKPOINT_PAGES, Sample
from feederd.spool.store import Spool
from feederd.spool.writer import EVICT_TO, QUEUE_MAX_BYTES, QUEUE_MAX_ITEMS, RESUME_MARGIN

__all__ = [
    "DB_NAME",
    "EVICT_TO",
    "FORMAT",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MAX_FULL_PROBS",
    "PAGE_SIZE",
    "QUEUE_MAX_BYTES",
    "QUEUE_MAX_ITEMS",
    "RESUME_MARGIN",
    "SAMPLES_DIR",
    "WAL_AUTOCHECKPOINT_PAGES",
    "Sample",
    "Spool",
    "embed_metadata",
    "extract_metadata",
    "sample_file",
]
