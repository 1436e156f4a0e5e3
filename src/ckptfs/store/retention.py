"""Retention policies and the plan of which versions garbage collection deletes.

Pure functions over catalog documents (no index, no packs), so the rules are easy to
read and to test:

- A policy is a dict of rules: `keep_last` (the newest N checkpoints of the run, by seal
  order, and apart the newest N versions of kind files), `keep_best` (the K best
  checkpoints by `metric` and `mode`), `max_age_days` (sealed within
  D days). Policies are set per run, per project, or for project `*` (every project);
  the most specific one applies whole: a run's policy replaces its project's, a
  project's replaces `*`'s. A run without any policy keeps everything.
- A version is kept if any rule of its run's policy keeps it. Always kept, whatever the
  policy: a version with an alias (an explicit one, or the derived `latest` and `best`),
  and every version a kept version names as its explicit parent (`lineage.parent` with
  source "explicit": a fine-tune's base, often in another run or project), to a fixed
  point. Lineage is never broken by retention: deleted versions leave a tombstone.
"""
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .catalog import metric_value
from .errors import RetentionError
from .names import ALL_PROJECTS
from .parentage import is_checkpoint_kind

COUNT_RULES = ("keep_last", "keep_best")
RULES = ("keep_last", "keep_best", "metric", "mode", "max_age_days")


# -- policies ------------------------------------------------------------------------------
def parse_rules(assignments) -> dict[str, str]:
    """{"keep_last": "3", ...} from ["keep_last=3", ...] (values still text)."""
    rules = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name or not value:
            raise RetentionError(f"expected RULE=VALUE, got {assignment!r} (rules: "
                                 + ", ".join(RULES) + ")")
        if name in rules:
            raise RetentionError(f"rule {name!r} is given twice")
        rules[name] = value
    return rules


def make_policy(given: dict, primary_metric: str | None = None,
                primary_mode: str | None = None) -> dict:
    """A complete, validated policy from rules given as text or numbers.

    `metric` defaults to the project's primary metric and `mode` to its mode: they are
    resolved now and stored with the policy, so a later change of the primary metric
    does not silently change what retention deletes."""
    unknown = sorted(set(given) - set(RULES))
    if unknown:
        raise RetentionError(f"unknown retention rule {unknown[0]!r}; rules: " + ", ".join(RULES))
    policy = {}
    for name in COUNT_RULES:
        if name in given:
            policy[name] = _count(name, given[name])
    if "max_age_days" in given:
        policy["max_age_days"] = _days(given["max_age_days"])
    if not policy:
        raise RetentionError("a retention policy needs at least one of keep_last=N, "
                             "keep_best=K or max_age_days=D")
    metric, mode = given.get("metric"), given.get("mode")
    if "keep_best" not in policy:
        if metric is not None or mode is not None:
            raise RetentionError("metric and mode only apply to keep_best: add keep_best=K "
                                 "or leave them out")
        return policy
    if mode is not None and mode not in ("min", "max"):
        raise RetentionError(f"mode must be 'min' or 'max', not {mode!r}")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise RetentionError("metric must be a metric name")
    if metric is None:
        if not primary_metric:
            raise RetentionError(
                "keep_best needs a metric: give metric=NAME mode=min|max, or set the "
                "project's primary metric (ckptfs config set STORE PROJECT "
                "primary_metric=NAME mode=min|max)")
        metric = primary_metric
    if mode is None:
        if metric != primary_metric:
            raise RetentionError(f"keep_best by {metric} needs mode=min or mode=max (the "
                                 "project's mode belongs to its primary metric)")
        mode = primary_mode or "min"
    policy.update(metric=metric, mode=mode)
    return policy


# Upper bounds keep every value storable (the index's JSON takes 64-bit integers) and
# every date computable; no real policy comes near them.
MAX_COUNT = 1_000_000_000
MAX_DAYS = 1_000_000


def _count(name: str, value) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise RetentionError(f"{name} must be a whole number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " (the newest version is always kept: it is `latest`)" if name == "keep_last" else ""
        raise RetentionError(f"{name} must be a whole number of at least 1, not {value!r}{hint}")
    if value > MAX_COUNT:
        raise RetentionError(f"{name} must be at most {MAX_COUNT:,}, not {value:,}")
    return value


def _days(value) -> int | float:
    if isinstance(value, str):
        text = value
        try:
            value = int(text, 10)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise RetentionError(f"max_age_days must be a number of days, not {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise RetentionError(f"max_age_days must be a number of days above 0, not {value!r}")
    if value > MAX_DAYS:
        raise RetentionError(f"max_age_days must be at most {MAX_DAYS:,}, not {value!r}")
    return value


def describe_policy(policy: dict) -> str:
    """keep_last=3 keep_best=2 metric=eval_loss mode=min max_age_days=30"""
    return " ".join(f"{name}={policy[name]}" for name in RULES if name in policy)


def policy_scope(project: str, run: str | None) -> str:
    """Where a policy is set: "p/r" (a run), "p" (a project) or "*" (every project)."""
    return f"{project}/{run}" if run is not None else project


def describe_scope(scope: str) -> str:
    if scope == ALL_PROJECTS:
        return "the default for every project (*)"
    return f"run {scope}" if "/" in scope else f"project {scope}"


def effective_policy(project: str, run: str, policies: dict[str, dict]) -> tuple[dict, str] | None:
    """(policy, scope) that applies to a run: its own, else its project's, else `*`'s."""
    for scope in (policy_scope(project, run), project, ALL_PROJECTS):
        if scope in policies:
            return policies[scope], scope
    return None


# -- planning --------------------------------------------------------------------------------
@dataclass
class Decision:
    """What the plan does with one version, and why (in words)."""
    project: str
    run: str
    version: str
    digest: str
    seq: int
    keep: bool
    reasons: list[str] = field(default_factory=list)
    policy: dict | None = None   # {"rules": {...}, "scope": "p/r" | "p" | "*"}

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.run}/{self.version}"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class RetentionPlan:
    decisions: dict[str, Decision]   # ref -> decision, every live version

    @property
    def deletions(self) -> list[Decision]:
        return sorted((d for d in self.decisions.values() if not d.keep), key=lambda d: d.seq)

    @property
    def kept(self) -> list[Decision]:
        return sorted((d for d in self.decisions.values() if d.keep), key=lambda d: d.seq)


def ref_of(doc: dict) -> str:
    return f"{doc['project']}/{doc['run']}/{doc['version']}"


def explicit_parent(doc: dict) -> str | None:
    """The version `doc` names as its explicit parent (`lineage.parent`, source
    "explicit"), or None. A run's own previous version does not count."""
    parent = (doc.get("lineage") or {}).get("parent")
    if not isinstance(parent, dict) or parent.get("source", "explicit") != "explicit":
        return None
    if not all(isinstance(parent.get(k), str) for k in ("project", "run", "version")):
        return None
    return f"{parent['project']}/{parent['run']}/{parent['version']}"


def sealed_time(doc: dict) -> datetime:
    return datetime.fromisoformat(doc["sealed_at"].replace("Z", "+00:00"))


def plan_retention(docs: list[dict], policies: dict[str, dict], now: datetime) -> RetentionPlan:
    """Decide, for every live version, whether it is kept and why.

    `docs`: catalog documents of every live version, each with its `aliases` (derived
    ones included: `Catalog.catalog_documents` attaches them). `policies`: scope ->
    policy. `now`: the moment ages are measured from (aware datetime)."""
    decisions = {}
    runs: dict[tuple, list[dict]] = {}
    for doc in docs:
        runs.setdefault((doc["project"], doc["run"]), []).append(doc)
    for (project, run), run_docs in runs.items():
        found = effective_policy(project, run, policies)
        for ref, decision in _decide_run(run_docs, found, now).items():
            decisions[ref] = decision
    _keep_explicit_parents(decisions, {ref_of(d): d for d in docs})
    return RetentionPlan(decisions)


def _decide_run(run_docs: list[dict], found, now: datetime) -> dict[str, Decision]:
    def decision(doc, keep, reasons, policy=None):
        return Decision(doc["project"], doc["run"], doc["version"], doc["digest"], doc["seq"],
                        keep, reasons, policy)
    if found is None:
        return {ref_of(d): decision(d, True, ["no retention policy applies to its run"])
                for d in run_docs}
    policy, scope = found
    stated = {"rules": policy, "scope": scope}
    # keep_last counts checkpoints and versions of kind files (logs, metrics) apart, so
    # the logs sealed at the end of a job never push its checkpoints out; keep_best is
    # for checkpoints (files versions have no metrics).
    last = set()
    for kind_docs in _by_kind(run_docs):
        newest = sorted(kind_docs, key=lambda d: d["seq"], reverse=True)
        last.update(ref_of(d) for d in newest[:policy.get("keep_last", 0)])
    best = _best([d for d in run_docs if is_checkpoint_kind(d)], policy)
    out = {}
    for doc in run_docs:
        ref = ref_of(doc)
        kept_by, dropped_by = [], []
        if "keep_last" in policy:
            n = policy["keep_last"]
            of_kind = "" if is_checkpoint_kind(doc) else " of kind files"
            (kept_by if ref in last else dropped_by).append(
                f"{'' if ref in last else 'not '}among the newest {n}{of_kind}")
        if "keep_best" in policy:
            k, metric, mode = policy["keep_best"], policy["metric"], policy["mode"]
            by = f"the best {k} by {metric} ({mode})"
            if ref in best:
                kept_by.append(f"among {by}")
            elif metric_value(doc, metric) is None:
                dropped_by.append(f"no {metric} value, so not among {by}")
            else:
                dropped_by.append(f"not among {by}")
        if "max_age_days" in policy:
            days = policy["max_age_days"]
            age = now - sealed_time(doc)
            if age <= timedelta(days=days):
                kept_by.append(f"sealed within {days} days")
            else:
                dropped_by.append(f"older than {days} days (sealed {age.days} days ago)")
        for alias in doc.get("aliases") or ():
            kept_by.append(f"alias {alias}")
        keep = bool(kept_by)
        out[ref] = decision(doc, keep, kept_by if keep else dropped_by, stated)
    return out


def _by_kind(run_docs: list[dict]) -> list[list[dict]]:
    checkpoints = [d for d in run_docs if is_checkpoint_kind(d)]
    return [checkpoints, [d for d in run_docs if not is_checkpoint_kind(d)]]


def _best(run_docs: list[dict], policy: dict) -> set[str]:
    if "keep_best" not in policy:
        return set()
    sign = -1 if policy["mode"] == "max" else 1
    scored = sorted((sign * value, doc["seq"], ref_of(doc)) for doc in run_docs
                    if (value := metric_value(doc, policy["metric"])) is not None)
    return {ref for _score, _seq, ref in scored[:policy["keep_best"]]}


def _keep_explicit_parents(decisions: dict[str, Decision], docs: dict[str, dict]) -> None:
    """Keep every version a kept version names as its explicit parent, to a fixed point
    (a kept fine-tune keeps its base, which keeps the base it came from, ...)."""
    queue = [ref for ref, d in decisions.items() if d.keep]
    while queue:
        child = queue.pop()
        parent = explicit_parent(docs[child])
        if parent is None or parent not in decisions:
            continue  # not in the store (or deleted already): nothing to keep
        decision = decisions[parent]
        if not decision.keep:
            decision.keep = True
            decision.reasons = []
            queue.append(parent)
        if f"explicit parent of {child}" not in decision.reasons:
            decision.reasons.append(f"explicit parent of {child}")
