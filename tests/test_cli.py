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


def test_each_subcommand_has_help():
    for name in cli.available():
        proc = run_cli(name, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage: adstack" in proc.stdout


def test_unknown_subcommand_is_rejected():
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
