"""`ferry-lab`'s command line follows `ferry`'s conventions: global options before or after the
command, `-o/--output table|json` (the old "text" still read as table), help with defaults,
usage errors exit 64. (Parsing only: no lab is started.)"""

from __future__ import annotations

import argparse

import pytest

from ferry.lab import main as lab_main


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "-o", "json"],
        ["status", "--output", "json"],
        ["-o", "json", "status"],
        ["--output=json", "status"],
    ],
)
def test_output_before_or_after_the_command(argv):
    assert lab_main.parse(argv).output == "json"


def test_defaults_and_the_old_word_text():
    args = lab_main.parse(["status"])
    assert (args.output, args.lab_dir, args.quiet) == ("table", None, False)
    assert lab_main.parse(["status", "--output", "text"]).output == "table"
    args = lab_main.parse(["up", "--hosts", "3", "-q", "--lab-dir", "/tmp/x", "-o", "json"])
    assert (args.hosts, args.quiet, str(args.lab_dir), args.output) == (3, True, "/tmp/x", "json")


def test_usage_errors_exit_64(capsys):
    assert lab_main.main(["status", "--bogus"]) == 64
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert lab_main.main(["status", "-o", "yaml"]) == 64
    assert lab_main.main([]) == 64


def test_every_option_has_help_and_values_say_their_default():
    parser = lab_main._parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in [("ferry-lab", parser), *commands.choices.items()]:
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            assert action.help, f"{flag}: no help"
            if action.nargs != 0 and not action.required:
                assert "Default:" in action.help, f"{flag}: say its default"


def test_help_lists_exit_codes_and_environment(capsys):
    with pytest.raises(SystemExit) as exc:
        lab_main.parse(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "\n  64 " in out and "FERRY_LAB_DIR" in out and "FERRY_ETCD_BIN" in out
