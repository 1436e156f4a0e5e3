"""What tests of several files or levels share: plain modules, imported by name
(`from tests.helpers.cli import run_cli_checked`); the fixtures live in conftest.py files."""
