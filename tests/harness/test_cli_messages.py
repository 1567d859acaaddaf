"""What the command line prints: user text stays text, quoting survives to the guest."""

from __future__ import annotations

import subprocess
import sys

from harness.qemu.cli import guest_command


def svmval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_an_unknown_host_names_the_table_to_add_with_its_brackets() -> None:
    r = svmval("run", "--host", "nosuch")
    assert r.returncode == 2
    # rich once read "[hosts.nosuch]" as markup and printed "Add a  table"
    assert "[hosts.nosuch]" in r.stdout + r.stderr, r.stdout + r.stderr


def test_words_after_the_double_dash_reach_the_shell_as_the_same_words() -> None:
    line = guest_command(("python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME", "it's"))
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['a b', '$HOME', \"it's\"]"


def test_one_word_is_a_command_line_of_its_own() -> None:
    line = guest_command(("echo one | tr o O; echo two",))
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["One", "two"]
    assert guest_command(()) == "uname -a"
