"""The docs name tests as evidence (docs/security.md's tables): every test they name
exists, so the tables cannot drift from the suite unnoticed."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`((?:[\w/]+\.py)?::\w+)(?:\[[^\]]*\])?`")


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def named_tests(doc: Path) -> list[tuple[str, str]]:
    """(test file, test name) of every `file.py::name` or `::name` (the file of the
    reference before it in the same table cell) in the doc's tables."""
    found = []
    for line in doc.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            current = None
            for ref in REFERENCE.findall(cell):
                file, name = ref.split("::")
                current = file or current
                assert current, f"{doc.name}: {ref} names no file before it: {cell.strip()}"
                found.append((current, name))
    return found


def test_every_test_security_md_names_exists():
    doc = ROOT / "docs" / "security.md"
    named = named_tests(doc)
    assert len(named) > 50  # the tables are there and were read
    missing = [f"{file}::{name}" for file, name in named
               if not (ROOT / "tests" / file).exists()
               or name not in functions_in(ROOT / "tests" / file)]
    assert missing == [], f"docs/security.md names tests that do not exist: {missing}"
