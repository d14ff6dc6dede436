"""The danga command in-process: demo on every backend, the lazy subcommands, bad input."""

import pytest

from danga import cli
from danga.demo import run_demo


def test_demo_echoes_on_every_backend(poller_cls, capsys):
    assert run_demo(poller_cls, 200) == 0
    out = capsys.readouterr().out
    assert f"danga {poller_cls.name}: 200 round trips" in out
    assert "every byte checked" in out


def test_demo_command(capsys):
    assert cli.main(["demo", "--messages", "50"]) == 0
    assert "50 round trips of 64 bytes" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("backends", "demo", "check", "bench"):
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_backend_is_one_line_and_status_2(capsys):
    assert cli.main(["demo", "--backend", "no-such-backend", "--messages", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("danga: ") and "no-such-backend" in err[0]


def test_backends_table_marks_the_chosen_one(monkeypatch, capsys):
    monkeypatch.setenv("DANGA_BACKEND", "select")
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    chosen = [line for line in out.splitlines() if line.startswith("*")]
    assert len(chosen) == 1 and chosen[0].split()[1] == "select"
    assert "chosen (DANGA_BACKEND): select" in out
