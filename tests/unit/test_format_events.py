"""docs/format.md's table of journal events names exactly the event types and fields
that store/events.py builds and applies, so the two cannot drift apart again."""
import os
import re

from ckptfs.store.catalog import PROJECT_SETTINGS
from ckptfs.store.events import EVENT_FIELDS

FORMAT_MD = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "format.md")
TABLE_HEADER = "| event `type` | its own fields |"


def documented_events() -> dict[str, str]:
    """{event type: the text of its fields cell} from the table in docs/format.md."""
    with open(FORMAT_MD, encoding="utf-8") as f:
        lines = f.read().split(TABLE_HEADER, 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def named_fields(cell: str) -> set[str]:
    """The `names` of a cell outside parentheses (what is inside explains a field)."""
    while True:
        shorter = re.sub(r"\([^()]*\)", "", cell)
        if shorter == cell:
            break
        cell = shorter
    return set(re.findall(r"`([a-z_]+)`", cell))


def test_the_table_names_every_event_type_and_no_other():
    assert set(documented_events()) == set(EVENT_FIELDS)


def test_the_table_names_the_fields_of_every_event():
    for kind, cell in documented_events().items():
        assert named_fields(cell) == set(EVENT_FIELDS[kind]), kind


def test_the_table_names_every_project_setting():
    cell = documented_events()["project.settings"]
    assert set(PROJECT_SETTINGS) <= set(re.findall(r"`([a-z_]+)`", cell))
