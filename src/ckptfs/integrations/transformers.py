"""A `transformers` TrainerCallback that archives each checkpoint the moment it is saved.

    from ckptfs.integrations.transformers import CkptfsCallback
    trainer = Trainer(..., args=TrainingArguments(output_dir="/mnt/ckpts/inbox/bert/run-42"),
                      callbacks=[CkptfsCallback(data={"name": "nli", "version": "v3"},
                                                tags=["baseline"])])

Without it, a checkpoint is sealed once its directory has been quiet for the mount's quiet
period; with it, at `on_save`, right after Trainer wrote it (and rotated the old ones).
The metadata it is given (the data it was trained on, tags, notes) goes into the
checkpoint's sidecar as a ckptfs.json would, without adding a file to the checkpoint.
Outside a ckptfs mount it does nothing (it says so once).
"""
import logging
import os

from transformers import TrainerCallback

from ckptfs import api

log = logging.getLogger("ckptfs.integrations.transformers")


class CkptfsCallback(TrainerCallback):
    def __init__(self, data: dict | None = None, tags: list | None = None,
                 notes: str | None = None, wait: bool = False):
        """`data`: the data set it trains on ({"name", "version", "split", "hash"});
        `tags`, `notes`: for every checkpoint; `wait`: block training until each
        checkpoint is sealed (a few ms after prepare-ahead; off by default)."""
        self.data, self.tags, self.notes, self.wait = data, tags, notes, wait
        self._outside_mount = False

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._outside_mount:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(checkpoint):
            return
        if api.mount_of(checkpoint) is None:
            self._outside_mount = True
            log.warning("ckptfs: %s is not in a ckptfs mount; CkptfsCallback does nothing",
                        args.output_dir)
            return
        lineage = {"data": self.data} if self.data else None
        if lineage or self.tags or self.notes:
            api.annotate(checkpoint, lineage=lineage, tags=self.tags, notes=self.notes)
        api.seal(checkpoint, wait=self.wait)
