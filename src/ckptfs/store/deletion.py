"""Retention policies, deletions and tombstones: the catalog side of garbage collection.

`RetentionMixin` gives `Store` its retention API. Every change is a journal event applied
to the index in the same commit (`retention.set`, `version.deleted`; see catalog.py for
how they are applied and replayed). The rules themselves are pure functions in
retention.py; reclaiming the space of deleted versions is gc.py's job.

A deleted version leaves `projects/` (and find, log, ls, latest, best) but not the
history: its tombstone keeps its version record and catalog document, with when, why
and by whom it was deleted, and its manifest stays in its pack, so its sidecar (file
list and SHA-256 included) can always be shown. Its name is never reused.
"""
from datetime import datetime, timezone

from .catalog import ALL_PROJECTS, apply_catalog_event
from .errors import DeletionRefusedError, NotFoundError, RetentionError, VersionDeletedError
from .index import fs_bytes, version_key
from .names import validate_name
from .retention import (RetentionPlan, describe_scope, effective_policy, explicit_parent,
                        make_policy, plan_retention, policy_scope)

# What planning reads of each catalog document (as columns: fast over many versions).
PLAN_FIELDS = [("aliases",), ("metrics",), ("lineage", "parent"), ("sealed_at",), ("digest",),
               ("kind",)]


def deleted_on(tombstone: dict) -> str:
    return tombstone["deleted_at"][:10]


class RetentionMixin:
    """Retention operations of `Store` (it provides `index`, `journal`, `_catch_up`,
    `_journal_and_index`, `catalog_documents`, `project_settings` and
    `read_manifest`)."""

    # -- policies -------------------------------------------------------------------------
    def retention_policies(self) -> dict[str, dict]:
        """Every policy set: scope ("p/r", "p" or "*") -> policy."""
        with self.index.read() as txn:
            return dict(self.index.iter_settings(txn, "retention"))

    def retention_policy(self, project: str, run: str | None = None) -> dict | None:
        """The policy set on exactly this project or run (not inherited)."""
        with self.index.read() as txn:
            return self.index.get_setting(txn, policy_scope(project, run), "retention")

    def effective_retention(self, project: str, run: str) -> tuple[dict, str] | None:
        """(policy, scope) that applies to a run, or None: it keeps every version."""
        return effective_policy(project, run, self.retention_policies())

    def set_retention_policy(self, project: str, run: str | None, rules: dict,
                             actor: dict | None = None) -> dict:
        """Set the policy of a run, a project or (project `*`) every project, replacing the
        one set there before; returns the policy as stored (metric and mode resolved).
        Needs maintainer on the project (enforced; `*`: on every project)."""
        self._check_policy_scope(project, run)
        self.authorize(actor, project, "maintainer", "set retention policies",
                       policy_scope(project, run))
        settings = self.project_settings(project)
        policy = make_policy(rules, settings.get("primary_metric"), settings.get("mode"))
        self._commit_catalog_event(lambda: {"type": "retention.set", "project": project,
                                            "run": run, "policy": policy}, actor)
        return policy

    def clear_retention_policy(self, project: str, run: str | None,
                               actor: dict | None = None) -> dict:
        """Remove the policy set on exactly this project or run; returns it. Needs
        maintainer (enforced)."""
        self._check_policy_scope(project, run)
        self.authorize(actor, project, "maintainer", "set retention policies",
                       policy_scope(project, run))
        scope = policy_scope(project, run)

        def event():
            if self.retention_policy(project, run) is None:
                raise RetentionError(f"no retention policy is set on {describe_scope(scope)}")
            return {"type": "retention.set", "project": project, "run": run, "policy": None}
        old = self.retention_policy(project, run)
        self._commit_catalog_event(event, actor)
        return old

    @staticmethod
    def _check_policy_scope(project: str, run: str | None):
        if project != ALL_PROJECTS:
            validate_name(project, "project")
        if run is not None:
            if project == ALL_PROJECTS:
                raise RetentionError("project * holds the default policy of every project; "
                                     "a run belongs to one project (PROJECT/RUN)")
            validate_name(run, "run")

    # -- tombstones -----------------------------------------------------------------------
    def tombstone(self, project: str, run: str, version: str) -> dict | None:
        with self.index.read() as txn:
            return self.index.get_tombstone(txn, version_key(project, run, version))

    def tombstones(self, project: str | None = None, run: str | None = None) -> list[dict]:
        """Tombstones (all, a project's or a run's), in key order."""
        if project is None:
            prefix = b""
        elif run is None:
            prefix = fs_bytes(project + "/")
        else:
            prefix = version_key(project, run, "")
        with self.index.read() as txn:
            return list(self.index.iter_tombstones(txn, prefix))

    def deleted_count(self) -> int:
        with self.index.read() as txn:
            return self.index.deleted_count(txn)

    def deleted_projects(self) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, b"", self.index.deleted)

    def deleted_runs(self, project: str) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, fs_bytes(project + "/"), self.index.deleted)

    @staticmethod
    def tombstone_document(tombstone: dict) -> dict:
        """The catalog document of a deleted version as it was, with `deleted_at` and
        `deletion` (reason, policy, manual, uid, user); it has no aliases any more."""
        doc = dict(tombstone["document"] or {})
        doc.update(deleted_at=tombstone["deleted_at"], deletion=tombstone["deletion"],
                   aliases=[], tags=sorted(doc.get("tags") or []))
        return doc

    def tombstone_entries(self, tombstone: dict) -> list[dict]:
        """The file entries of a deleted version, from its manifest (kept forever)."""
        return self.read_manifest(bytes.fromhex(tombstone["record"]["manifest"]))["entries"]

    def deleted_error(self, project: str, run: str, version: str) -> NotFoundError | None:
        """The error for a version that was deleted (None if it was not)."""
        tomb = self.tombstone(project, run, version)
        if tomb is None:
            return None
        reason = tomb["deletion"].get("reason") or "no reason given"
        return NotFoundError(
            f"version {project}/{run}/{version} was deleted on {deleted_on(tomb)} ({reason}); "
            f"its sidecar stays: `ckptfs show STORE {project}/{run}/{version}` or "
            f"MOUNT/.ckptfs/deleted/{project}/{run}/{version}.json")

    def check_name_not_deleted(self, project: str, run: str, version: str) -> None:
        tomb = self.tombstone(project, run, version)
        if tomb is not None:
            raise VersionDeletedError(
                f"version {project}/{run}/{version} was deleted on {deleted_on(tomb)}: version "
                "names are never reused; import under a new version name")

    # -- planning and deleting ------------------------------------------------------------
    def plan_retention(self, now: datetime | None = None) -> RetentionPlan:
        """Which versions the retention policies keep and which they delete, and why."""
        now = now or datetime.now(timezone.utc)
        docs = self.catalog_documents(fields=PLAN_FIELDS)
        return plan_retention(docs, self.retention_policies(), now)

    def apply_retention(self, now: datetime | None = None, actor: dict | None = None) -> list:
        """Delete what the policies say, planned again under the journal lock so the plan
        is exact (no seal or alias change slips in between): one `version.deleted` event
        per version. Returns the decisions carried out. Needs maintainer on every project
        it deletes from (enforced): otherwise nothing is deleted."""
        with self.journal.locked():
            self._catch_up()
            deletions = self.plan_retention(now).deletions
            refused = self._retention_refusal(deletions, actor)
            for decision in deletions if refused is None else ():
                self._journal_and_index(
                    {"type": "version.deleted", "project": decision.project, "run": decision.run,
                     "version": decision.version, "digest": decision.digest,
                     "reason": decision.reason, "policy": decision.policy, "manual": False},
                    actor, lambda txn, entry: apply_catalog_event(self.index, txn, entry))
        if refused is not None:  # journaled outside the lock: the refusal is a commit too
            self.record_refusal(refused)
            raise refused
        return deletions

    def _retention_refusal(self, deletions: list, actor: dict | None):
        """The access error for the first project of `deletions` where `actor` is not a
        maintainer, or None (no I/O: called under the journal lock)."""
        for project in sorted({d.project for d in deletions}):
            error = self.check_access(actor, project, "maintainer",
                                      "delete versions by retention")
            if error is not None:
                return error
        return None

    def delete_version(self, project: str, run: str, version: str, reason: str,
                       actor: dict | None = None) -> dict:
        """Delete one version by hand (`ckptfs delete`), under the rules retention keeps:
        refused if it has an alias (latest and best included) or a live version names it
        as its explicit parent. Its space is reclaimed by the next `gc`. Needs
        maintainer (enforced)."""
        self.authorize(actor, project, "maintainer", "delete versions",
                       f"{project}/{run}/{version}")
        if not isinstance(reason, str) or not reason.strip():
            raise DeletionRefusedError("a deletion needs a reason (--reason TEXT): it is kept "
                                       "in the journal and the tombstone")

        def event():
            record = self.version_record(project, run, version)
            if record is None:
                tomb_error = self.deleted_error(project, run, version)
                if tomb_error is not None:
                    raise DeletionRefusedError(str(tomb_error).split(";")[0] + ": already deleted")
                raise NotFoundError(f"no version {project}/{run}/{version} in the store")
            self._refuse_if_kept(project, run, version)
            return {"type": "version.deleted", "project": project, "run": run,
                    "version": version, "digest": record["digest"], "reason": reason.strip(),
                    "policy": None, "manual": True}
        return self._commit_catalog_event(event, actor)

    def _refuse_if_kept(self, project: str, run: str, version: str):
        ref = f"{project}/{run}/{version}"
        docs = {d["version"]: d for d in self.catalog_documents(project, run, fields=[("aliases",)])}
        aliases = docs[version]["aliases"]
        if "latest" in aliases:
            raise DeletionRefusedError(f"{ref} is the newest version of its run (latest): the "
                                       "newest version of a run is always kept")
        if "best" in aliases:
            raise DeletionRefusedError(f"{ref} is the best version of its run by the project's "
                                       "primary metric (best): it is always kept")
        if aliases:
            raise DeletionRefusedError(
                f"{ref} has the alias(es) {', '.join(aliases)}: a version with an alias is "
                f"always kept; remove them first (ckptfs untag STORE {project}/{run} NAME)")
        children = sorted(f"{d['project']}/{d['run']}/{d['version']}"
                          for d in self.catalog_documents(fields=[("lineage", "parent")])
                          if explicit_parent(d) == ref)
        if children:
            raise DeletionRefusedError(
                f"{ref} is the explicit parent of {', '.join(children)}: a version another "
                "one was made from is kept while that one lives (delete it first)")
