"""The spool protocol: everything under STORE/spool/, in one place.

The mount daemon (ckptfs.fs) and the command line (`ckptfs seal`, `status`, `mount`'s
checks) meet in the spool: what jobs wrote and is not sealed yet, the records that let a
seal survive a crash, the error files, the seal requests and the daemon's lock. This
package is all of it, and imports neither pyfuse3 nor trio: the CLI reads and writes the
spool without loading the daemon (tests/test_spool_protocol.py checks it).

    STORE/spool/
      inbox/<p>/<r>/<path…>        what jobs wrote and is not sealed yet, as they wrote it
      removed/<p>/<r>/<path…>      files a job removed from a unit that is not sealed yet:
                                   kept until that unit is sealed (if the job removes the
                                   whole unit, it is sealed with them first)
      removed/<p>/<r>/#<n>/…       a whole unit the job removed before its seal, and
      removed/<p>/<r>/#<n>.json    what it is: sealed, then hidden from the working view
      staging/<n>/                 a unit being sealed: hard links to its spooled files
                                   (and files carried over from its previous version)
      sealing/<n>.json             a seal under way: lets the next start finish a seal
                                   whose daemon died between the commit and the clean-up
      views/<p>/<r>.json           sealed entries the job removed from its working view
      errors/<path>.error          why something was refused or failed (shown in the view)
      provenance/<p>/<r>/<key>.json  who wrote what (the first process, a few others)
      requests/<n>.json            `ckptfs seal` asking a running daemon to seal a unit
      annotations/<p>/<r>/<key>.json metadata given with `ckptfs.annotate` for a unit
      staged-packs                 packs opened for files prepared ahead of their seal
      daemon.lock                  held (flock) by the one process working on the spool
      daemon.running               a daemon started and has not stopped cleanly (after a
                                   crash: the units it left are held)
      daemon-stats.json            the running daemon's counters (seals, failures, read
                                   errors) and pending units, rewritten every few seconds
                                   (read by `ckptfs serve`'s health page and /metrics)

(`unpack-<pid>-…/`, a tar being imported, is the import's: meta/import_export.py.)

Modules:
    layout         the names above, and how a JSON record is written and read
    directory      `Spool`: the spooled files (inbox, removed, staging, views, errors)
    records        provenance, annotations, sealing intents, staged packs
    daemon         the daemon's lock and running marker: who works on the spool, and
                   did the last daemon die
    seal_requests  `ckptfs seal` beside a daemon (a request, then its outcome) and what
                   waits in the inbox, as `ckptfs seal` and `status` see it
"""
