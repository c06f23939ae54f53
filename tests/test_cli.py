"""The adstack command: help lists every available subcommand, bad input is one line and exit 2."""

import subprocess
import sys

from adstack import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "adstack.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_available_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in cli.available():
        assert name in proc.stdout


def test_help_imports_no_stage_package():
    """``adstack --help`` finds the subcommands without importing their packages (hdmap alone: 0.5 s)."""
    code = ("import sys; from adstack import cli; cli.build_parser(); "
            "print(sorted(m for m in ('hdmap', 'sim', 'perception', 'planning', 'fusion', 'control') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    assert set(cli.available()) == set(cli.SUBCOMMANDS)  # all installed here
    assert not cli._module_present("hdmap.no_such_module") and not cli._module_present("no_such_package.cli")


def test_each_subcommand_has_help():
    for name in cli.available():
        proc = run_cli(name, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage: adstack" in proc.stdout


def test_unknown_subcommand_is_rejected():
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
