"""What every `ckptfs` command shares (docs/cli.md): `--json` on the commands that list
or report, examples in every command's help (each one parses), the exit codes in
`ckptfs --help`, and shell completion through click's protocol in a real bash."""
import json
import os
import re
import shlex
import subprocess
import sys

import click
import pytest

from ckptfs.cli.app import main
from ckptfs.store import Store
from tests.helpers import diff as diff_helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.recovery import flip_payload_byte, two_versions

diffed = diff_helpers.diffed  # a fixture (tests/helpers/diff.py): nlp/run-a/{s1,s2}, vision/ft/f1


def every_command(group: click.Group = main, prefix: tuple = ()):
    """(full name, command) of the group itself and every command below it."""
    yield " ".join(prefix), group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from every_command(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), command


# -- examples in --help ------------------------------------------------------------------------
def help_examples(text: str) -> list[str]:
    """The lines of the "Examples:" block of a command's help."""
    lines = text.splitlines()
    start = lines.index("  Examples:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        block.append(line.strip())
    return block


def test_every_command_has_examples_of_itself_in_its_help():
    names = [name for name, _ in every_command()]
    helps = run_cli_many(*[(*name.split(), "--help") for name in names])
    for name, proc in zip(names, helps):
        text = proc.stdout.decode()
        assert "  Examples:" in text.splitlines(), f"`ckptfs {name} --help` has no examples"
        found = help_examples(text)
        assert 1 <= len(found) <= 3, (name, found)
        assert all(f"ckptfs {name}".rstrip() in line for line in found), (name, found)


def invocation(example: str) -> list[str]:
    """The arguments after `ckptfs` in an example, up to a pipe, a redirection, a `)` or a
    comment (`eval "$(ckptfs completion bash)"  # …` -> ["completion", "bash"])."""
    command = example[example.index("ckptfs "):]
    words = shlex.split(re.split(r"\s+#|\)|\s[|>]", command)[0])
    return words[1:]


def test_every_example_parses():
    """Each example is a command line the command accepts: its subcommand exists, its
    options are real, its arguments are all there (parsed only: no store is opened)."""
    for name, command in every_command():
        for example in help_examples(command.get_help(click.Context(command, info_name=name))):
            args = invocation(example)
            target = main
            while isinstance(target, click.Group):
                target = target.commands[args.pop(0)]
            try:
                target.make_context(target.name, list(args))  # raises click.UsageError
            except click.BadParameter as e:
                # A file named in an example need not exist here; anything else is wrong.
                if isinstance(e, click.MissingParameter) or \
                        not isinstance(e.param.type, (click.File, click.Path)):
                    pytest.fail(f"{example}: {e.format_message()}")


def test_exit_codes_are_in_the_top_help_as_the_commands_use_them(diffed, tmp_path):
    text = run_cli_checked("--help").stdout.decode()
    block = text[text.index("Exit codes:"):text.index("Examples:")]
    documented = [int(code) for code in re.findall(r"^\s{4}(\d+)\s", block, re.MULTILINE)]
    assert documented == [0, 1, 2, 3, 130]
    error, usage = run_cli_many(("show", diffed.store, "nlp/run-a/s9"), ("show", diffed.store),
                                rc=None)
    assert (error.returncode, usage.returncode) == (1, 2)
    assert error.stderr.decode().startswith("ckptfs: error: ")
    store = str(tmp_path / "store")
    two_versions(tmp_path, store)
    flip_payload_byte(store, "v1", "model.safetensors")
    assert run_cli_checked("verify", store, rc=None).returncode == 3


# -- --json --------------------------------------------------------------------------------------
def as_json(proc) -> object:
    return json.loads(proc.stdout)


def test_ls_json_at_every_level(diffed):
    projects, runs, versions, files = run_cli_many(
        ("ls", diffed.store, "--json"), ("ls", diffed.store, "nlp", "--json"),
        ("ls", diffed.store, "nlp/run-a", "--json"), ("ls", diffed.store, "nlp/run-a/s2", "--json"))
    assert as_json(projects) == {"projects": ["nlp", "vision"]}
    assert as_json(runs) == {"project": "nlp", "runs": ["run-a"]}
    listed = as_json(versions)
    assert (listed["project"], listed["run"]) == ("nlp", "run-a")
    assert [(v["version"], v["files"], v["damaged"], v["damaged_files"])
            for v in listed["versions"]] == [("s1", 4, None, []), ("s2", 4, None, [])]
    assert listed["versions"][0]["sealed_at"] < listed["versions"][1]["sealed_at"]
    entries = as_json(files)
    assert entries["path"] == "nlp/run-a/s2"
    by_name = {e["name"]: e for e in entries["entries"]}
    assert sorted(by_name) == ["ckptfs.json", "eval.txt", "tokenizer.json", "weights.bin"]
    weights = by_name["weights.bin"]
    assert (weights["type"], weights["size"], weights["sha256"]) == (
        "file", 4096, diff_helpers.sha256(diff_helpers.WEIGHTS_2))


def test_log_and_tags_json(diffed):
    log, limited, tags = run_cli_many(
        ("log", diffed.store, "--json"), ("log", diffed.store, "nlp/run-a", "-n", "1", "--json"),
        ("tags", diffed.store, "nlp/run-a", "--json"))
    docs = as_json(log)
    assert [d["path"] for d in docs] == ["projects/vision/ft/f1", "projects/nlp/run-a/s2",
                                         "projects/nlp/run-a/s1"]  # newest first
    assert docs[2]["metrics"] == {"loss": 1.0, "acc": 0.5, "old_only": 3}
    assert docs[2]["tags"] == ["production"] and "seq" not in docs[2]
    assert [d["path"] for d in as_json(limited)] == ["projects/nlp/run-a/s2"]
    assert as_json(tags) == {"project": "nlp", "run": "run-a",
                             "aliases": {"best": "s2", "latest": "s2", "production": "s1"}}
    both = run_cli_checked("log", diffed.store, "--json", "--oneline", rc=2)
    assert b"--oneline and --json exclude each other" in both.stderr


def test_access_show_json(diffed):
    everything, one = run_cli_many(("access", "show", diffed.store, "--json"),
                                   ("access", "show", diffed.store, "nlp", "--json"))
    shown = as_json(everything)
    assert shown["enforced"] is False
    assert {"project": "*", "principal": "user:root", "role": "admin"} in shown["grants"]
    assert shown["you"] == {"uid": os.getuid(), "user": "root", "project": "*", "role": "admin"}
    assert as_json(one)["you"]["project"] == "nlp"


def test_verify_json_reports_the_damage_and_keeps_the_exit_code(tmp_path):
    store = str(tmp_path / "store")
    two_versions(tmp_path, store)
    whole = as_json(run_cli_checked("verify", store, "--json", "--signatures"))
    assert whole["ok"] is True and whole["versions"] == 2 and whole["damaged_files"] == []
    assert whole["signatures"]["unsigned"] == ["p/r/v1", "p/r/v2"]
    flip_payload_byte(store, "v1", "optimizer.pt")  # in v1 only
    proc = run_cli_checked("verify", store, "--json", rc=3)
    damaged = as_json(proc)
    assert damaged["ok"] is False and damaged["signatures"] is None
    assert damaged["damaged_versions"] == ["p/r/v1"]
    assert [(f["version"], f["path"]) for f in damaged["damaged_files"]] == [
        ("p/r/v1", "optimizer.pt")]
    assert [p["pack"] for p in damaged["damaged_packs"]] and damaged["damaged_chunks"]
    assert proc.stderr.decode().startswith("ckptfs: error: verify found damage")
    listed = as_json(run_cli_checked("ls", store, "p/r", "--json"))["versions"]
    assert [(v["version"], v["damaged"], v["damaged_files"]) for v in listed] == [
        ("v1", "files", ["optimizer.pt"]), ("v2", None, [])]


def test_status_json_of_a_store(store_path):
    Store.init(store_path).close()
    spooled = os.path.join(store_path, "spool", "inbox", "p", "r", "v1", "model.bin")
    os.makedirs(os.path.dirname(spooled))
    with open(spooled, "wb") as f:
        f.write(b"weights")
    status = as_json(run_cli_checked("status", store_path, "--json"))
    assert {k: status[k] for k in ("store", "mounted", "mountpoint", "last_daemon_died")} == {
        "store": store_path, "mounted": False, "mountpoint": None, "last_daemon_died": False}
    assert [(u["version"], u["state"]) for u in status["pending_inbox_versions"]] == [
        ("p/r/v1", "spooled")]


# -- shell completion ------------------------------------------------------------------------------
@pytest.fixture
def ckptfs_on_path(tmp_path) -> dict:
    """An environment whose PATH has a `ckptfs` executable, as installed (a console
    script of this Python): the completion scripts call the command by that name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ckptfs"
    script.write_text(f"#!{sys.executable}\nfrom ckptfs.cli.app import main\nmain()\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def bash_completes(env: dict, *words: str) -> list[str]:
    """What bash offers for the last of `words` once `ckptfs completion bash` is loaded
    (the completion function called as bash calls it, with COMP_WORDS and COMP_CWORD)."""
    typed = " ".join(shlex.quote(w) for w in words)
    script = ('eval "$(ckptfs completion bash)"\n'
              f"COMP_WORDS=({typed}); COMP_CWORD={len(words) - 1}\n"
              '_ckptfs_completion ckptfs\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_commands_subcommands_and_choices(ckptfs_on_path):
    assert bash_completes(ckptfs_on_path, "ckptfs", "ver") == ["verify"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "access", "s") == ["show"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "access", "grant", "/data/ckpts", "bert",
                          "") == ["reader", "writer", "maintainer", "admin"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "diff", "/s", "a", "b", "--j") == ["--json"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "completion", "") == ["bash", "zsh", "fish"]


def test_the_protocol_answers_a_directory_for_store_and_each_shell_has_a_script(ckptfs_on_path):
    def ask(shell: str, words: str, cword: str) -> list[str]:
        env = {**ckptfs_on_path, "_CKPTFS_COMPLETE": f"{shell}_complete",
               "COMP_WORDS": words, "COMP_CWORD": cword}
        proc = subprocess.run(["ckptfs"], env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()
    assert ask("bash", "ckptfs ls /tm", "2") == ["dir,/tm"]
    assert ask("bash", "ckptfs status /mn", "2") == ["dir,/mn"]
    assert ask("zsh", "ckptfs ver", "1")[:2] == ["plain", "verify"]
    assert ask("fish", "ckptfs ver", "ver")[0].startswith("plain,verify")
    zsh, fish = run_cli_many(("completion", "zsh"), ("completion", "fish"))
    assert "#compdef ckptfs" in zsh.stdout.decode()
    assert "complete --no-files --command ckptfs" in fish.stdout.decode()
    assert b"'powershell' is not one of" in run_cli_checked("completion", "powershell",
                                                            rc=2).stderr


def test_bash_completes_names_from_the_store(ckptfs_on_path, diffed):
    """Projects, runs, versions and aliases, and a version's files, as bash offers file
    names: whole names, so it extends their common prefix and adds a space after a
    complete one; nothing at all for a store that is not there."""
    store = diffed.store
    with Store.open(store) as s:
        names = sorted(["s1", "s2", *s.aliases("nlp", "run-a")])
    assert "production" in names and "latest" in names
    assert bash_completes(ckptfs_on_path, "ckptfs", "show", store, "nlp/run-a/") == [
        f"nlp/run-a/{name}" for name in names]
    assert bash_completes(ckptfs_on_path, "ckptfs", "diff", store, "nlp/run-a/s1", "vi") == [
        "vision/ft/f1", "vision/ft/latest"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "cat", store, "nlp/run-a/s") == [
        "nlp/run-a/s1/", "nlp/run-a/s2/"]
    files = bash_completes(ckptfs_on_path, "ckptfs", "cat", store, "nlp/run-a/s2/")
    assert "nlp/run-a/s2/weights.bin" in files and "nlp/run-a/s2/eval.txt" in files
    assert bash_completes(ckptfs_on_path, "ckptfs", "log", store, "") == [
        "nlp", "nlp/run-a", "vision", "vision/ft"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "config", "show", store, "v") == ["vision"]
    env = {**ckptfs_on_path, "CKPTFS_STORE": store}
    assert bash_completes(env, "ckptfs", "tags", "nlp/") == ["nlp/run-a"]
    assert bash_completes(ckptfs_on_path, "ckptfs", "show", str(diffed.store) + "-not", "n") == []
