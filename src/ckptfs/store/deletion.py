"""Retention policies and deletions: the catalog side of garbage collection.

`Retention` sets policies, plans with them, and deletes versions (by policy or by hand).
Every change is a journal event committed through the committer (`retention.set`,
`version.deleted`; events.py applies them). The rules themselves are pure functions in
retention.py; the catalog reads tombstones; reclaiming the space of deleted versions is
gc.py's job.

A deleted version leaves `projects/` (and find, log, ls, latest, best) but not the
history: its tombstone keeps its version record and catalog document, with when, why
and by whom it was deleted, and its manifest stays in its pack, so its sidecar (file
list and SHA-256 included) can always be shown. Its name is never reused.
"""
from datetime import datetime, timezone

from .errors import DeletionRefusedError, NotFoundError, RetentionError
from .events import retention_set, version_deleted
from .names import ALL_PROJECTS, validate_name
from .retention import (RetentionPlan, describe_scope, effective_policy, explicit_parent,
                        make_policy, plan_retention, policy_scope)

# What planning reads of each catalog document (as columns: fast over many versions).
PLAN_FIELDS = [("aliases",), ("metrics",), ("lineage", "parent"), ("sealed_at",), ("digest",),
               ("kind",)]


class Retention:
    """Retention policies and deletions. Given the index (policies are read from it),
    the committer, the catalog (documents to plan with, versions, aliases, settings),
    access control (who may delete) and `read_manifest` (a tombstone's file list)."""

    def __init__(self, index, committer, catalog, access, read_manifest):
        self.index = index
        self.committer = committer
        self.catalog = catalog
        self.access = access
        self.read_manifest = read_manifest

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
        self.access.authorize(actor, project, "maintainer", "set retention policies",
                       policy_scope(project, run))
        settings = self.catalog.project_settings(project)
        policy = make_policy(rules, settings.get("primary_metric"), settings.get("mode"))
        self.committer.commit_event(lambda: retention_set(project, run, policy), actor)
        return policy

    def clear_retention_policy(self, project: str, run: str | None,
                               actor: dict | None = None) -> dict:
        """Remove the policy set on exactly this project or run; returns it. Needs
        maintainer (enforced)."""
        self._check_policy_scope(project, run)
        self.access.authorize(actor, project, "maintainer", "set retention policies",
                       policy_scope(project, run))
        scope = policy_scope(project, run)

        def event():
            if self.retention_policy(project, run) is None:
                raise RetentionError(f"no retention policy is set on {describe_scope(scope)}")
            return retention_set(project, run, None)
        old = self.retention_policy(project, run)
        self.committer.commit_event(event, actor)
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
    def tombstone_entries(self, tombstone: dict) -> list[dict]:
        """The file entries of a deleted version, from its manifest (kept forever)."""
        return self.read_manifest(bytes.fromhex(tombstone["record"]["manifest"]))["entries"]

    # -- planning and deleting ------------------------------------------------------------
    def plan_retention(self, now: datetime | None = None) -> RetentionPlan:
        """Which versions the retention policies keep and which they delete, and why."""
        now = now or datetime.now(timezone.utc)
        docs = self.catalog.catalog_documents(fields=PLAN_FIELDS)
        return plan_retention(docs, self.retention_policies(), now)

    def apply_retention(self, now: datetime | None = None, actor: dict | None = None) -> list:
        """Delete what the policies say, planned again under the journal lock so the plan
        is exact (no seal or alias change slips in between): one `version.deleted` event
        per version. Returns the decisions carried out. Needs maintainer on every project
        it deletes from (enforced): otherwise nothing is deleted."""
        def delete_planned():
            # Planned again on every try: one that lost a journal seq sees the winner's.
            deletions = self.plan_retention(now).deletions
            refused = self.refusal(deletions, actor)
            for decision in deletions if refused is None else ():
                self.committer.journal_and_index(version_deleted(
                    decision.project, decision.run, decision.version, digest=decision.digest,
                    reason=decision.reason, policy=decision.policy, manual=False), actor)
            return deletions, refused
        deletions, refused = self.committer.attempt(delete_planned)
        if refused is not None:  # journaled outside the lock: the refusal is a commit too
            self.access.record_refusal(refused)
            raise refused
        return deletions

    def refuse_unless_allowed(self, deletions: list, actor: dict | None) -> None:
        """Raise the access error (logged and journaled) unless `actor` may delete all of
        `deletions`."""
        refused = self.refusal(deletions, actor)
        if refused is not None:
            self.access.record_refusal(refused)
            raise refused

    def refusal(self, deletions: list, actor: dict | None):
        """The access error for the first project of `deletions` where `actor` is not a
        maintainer, or None (no I/O: called under the journal lock)."""
        for project in sorted({d.project for d in deletions}):
            error = self.access.check_access(actor, project, "maintainer",
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
        self.access.authorize(actor, project, "maintainer", "delete versions",
                       f"{project}/{run}/{version}")
        if not isinstance(reason, str) or not reason.strip():
            raise DeletionRefusedError("a deletion needs a reason (--reason TEXT): it is kept "
                                       "in the journal and the tombstone")

        def event():
            record = self.catalog.version_record(project, run, version)
            if record is None:
                tomb_error = self.catalog.deleted_error(project, run, version)
                if tomb_error is not None:
                    raise DeletionRefusedError(str(tomb_error).split(";")[0] + ": already deleted")
                raise NotFoundError(f"no version {project}/{run}/{version} in the store")
            self._refuse_if_kept(project, run, version)
            return version_deleted(project, run, version, digest=record["digest"],
                                   reason=reason.strip(), policy=None, manual=True)
        return self.committer.commit_event(event, actor)

    def _refuse_if_kept(self, project: str, run: str, version: str):
        ref = f"{project}/{run}/{version}"
        docs = {d["version"]: d for d in self.catalog.catalog_documents(project, run,
                                                                         fields=[("aliases",)])}
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
                          for d in self.catalog.catalog_documents(fields=[("lineage", "parent")])
                          if explicit_parent(d) == ref)
        if children:
            raise DeletionRefusedError(
                f"{ref} is the explicit parent of {', '.join(children)}: a version another "
                "one was made from is kept while that one lives (delete it first)")
