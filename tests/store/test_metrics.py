"""The Prometheus exposition of a store (ckptfs.web.metrics.render), parsed with
prometheus_client's own parser and checked against the store; and the alert rules of
docs/monitoring.md: valid YAML, naming only metrics the exposition has."""
import os
import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ckptfs.spool.directory import Spool
from ckptfs.web.metrics import CONTENT_TYPE, render
from tests.helpers import health as helpers
from tests.helpers.health import ACCURACY_SCHEMA, NOBODY, RUNS

template, s = helpers.template, helpers.s  # fixtures (tests/helpers/health.py)
DOCS = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "monitoring.md")


def scrape(store, actor=None) -> dict:
    """{(sample name, label items): value} of the store's exposition."""
    text = render(store, actor).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def projects_in(samples: dict, name: str) -> set[str]:
    return {dict(labels)["project"] for sample, labels in samples if sample == name}


def test_versions_and_bytes_per_project_are_the_stores(s):
    s.delete_version("nlp", "run-1", "step-100", reason="test")
    samples = scrape(s)
    for project in ("nlp", "cv"):
        live = [v for v in s.all_versions() if v["project"] == project]
        ever = live + [t["record"] for t in s.tombstones() if t["record"]["project"] == project]
        assert value(samples, "ckptfs_versions", project=project) == len(live)
        assert value(samples, "ckptfs_logical_bytes", project=project) == \
            sum(v["logical_bytes"] for v in live)
        assert value(samples, "ckptfs_stored_bytes", project=project) == \
            sum(v["new_stored_bytes"] for v in live)
        assert value(samples, "ckptfs_versions_sealed_total", project=project) == len(ever)
        assert value(samples, "ckptfs_sealed_logical_bytes_total", project=project) == \
            sum(v["logical_bytes"] for v in ever)
    assert value(samples, "ckptfs_versions_sealed_total", project="nlp") == \
        sum(len(steps) for (p, _r), steps in RUNS.items() if p == "nlp")
    stats = s.stats()
    assert value(samples, "ckptfs_store_logical_bytes") == stats["logical_bytes"]
    assert value(samples, "ckptfs_store_stored_bytes") == stats["stored_bytes"]
    assert value(samples, "ckptfs_packs") == stats["packs"]
    assert value(samples, "ckptfs_pack_bytes") == stats["pack_bytes"]
    assert value(samples, "ckptfs_daemon_up") == 0
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_failures_missing_metadata_access_changes_and_verify_are_exposed(s):
    before = scrape(s)
    assert value(before, "ckptfs_seal_failures", project="nlp") == 0
    assert value(before, "ckptfs_unverified_packs") == before[("ckptfs_packs", ())] > 0
    assert ("ckptfs_last_verify_timestamp_seconds", ()) not in before
    Spool(s.path).write_error("nlp/run-1/checkpoint-9", "sealing failed: a full disk")
    s.set_project_schema("nlp", ACCURACY_SCHEMA)
    s.grant("cv", "user:nobody", "reader")
    s.verify()
    after = scrape(s)
    assert value(after, "ckptfs_seal_failures", project="nlp") == 1
    assert value(after, "ckptfs_seal_failures", project="cv") == 0
    assert value(after, "ckptfs_versions_missing_required_metadata", project="nlp") == 3
    assert value(after, "ckptfs_versions_missing_required_metadata", project="cv") == 0
    assert value(after, "ckptfs_access_changes_total", project="cv") == \
        value(before, "ckptfs_access_changes_total", project="cv") + 1
    assert value(after, "ckptfs_last_verify_success") == 1
    assert value(after, "ckptfs_unverified_packs") == 0
    assert value(after, "ckptfs_last_verify_timestamp_seconds") >= os.path.getmtime(
        max((os.path.join(d, f) for d, _, files in os.walk(os.path.join(s.path, "packs"))
             for f in files), key=os.path.getmtime))


def test_a_user_sees_only_the_projects_it_may_read(s):
    s.grant("cv", "user:nobody", "reader")
    s.set_enforcement(True)
    Spool(s.path).write_error("nlp/run-1/checkpoint-9", "sealing failed")
    mine = scrape(s, NOBODY)
    for name in ("ckptfs_versions", "ckptfs_logical_bytes", "ckptfs_seal_failures",
                 "ckptfs_versions_sealed_total", "ckptfs_versions_missing_required_metadata"):
        assert projects_in(mine, name) == {"cv"}, name
    assert projects_in(scrape(s), "ckptfs_versions") == {"cv", "nlp"}


def alert_rules() -> list[dict]:
    with open(DOCS) as f:
        blocks = re.findall(r"```yaml\n(.*?)```", f.read(), re.S)
    docs = [yaml.safe_load(block) for block in blocks]
    groups = [doc for doc in docs if isinstance(doc, dict) and "groups" in doc]
    assert len(groups) == 1, "docs/monitoring.md has one block of alert rules"
    return [rule for group in groups[0]["groups"] for rule in group["rules"]]


def test_the_documented_alert_rules_name_metrics_the_exposition_has(s):
    s.verify()   # so that the last verify's metrics are there too
    exposed = {name for name, _labels in scrape(s)}
    rules = alert_rules()
    wanted = {"CkptfsSealFailed", "CkptfsPermissionChanged",
              "CkptfsVersionWithoutRequiredMetadata", "CkptfsInboxNotDraining",
              "CkptfsPacksUnverified"}
    assert wanted <= {rule["alert"] for rule in rules}
    for rule in rules:
        names = re.findall(r"\bckptfs_[a-z_]+", rule["expr"])
        assert names, rule
        assert set(names) <= exposed, (rule["alert"], set(names) - exposed)


def test_the_documented_metrics_are_those_exposed(s):
    s.verify()   # every metric is there once a verify ran
    with open(DOCS) as f:
        documented = set(re.findall(r"^\| `(ckptfs_[a-z_]+)`", f.read(), re.M))
    exposed = {family.name + ("_total" if family.type == "counter" else "")
               for family in text_string_to_metric_families(render(s).decode())}
    assert exposed == documented, (exposed - documented, documented - exposed)
