"""The `ferry` command line behaves as operators of kubectl, openstack and virsh expect: global
options before or after the command, help on every flag with its unit and default, exit codes and
environment in --help, --version, shell completion, usage errors on their own exit code (64)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ferry.cli import main as cli
from ferry.cli.args import EXIT_USAGE, UsageError, VirshElsewhere, parse, parser

FERRY = Path(sys.executable).parent / "ferry"
NOWHERE = "unix:/nonexistent/ferry-test.sock"  # nothing is ever sent there


@pytest.mark.parametrize(
    "argv",
    [
        ["vms", "-o", "json"],
        ["vms", "--output", "json"],
        ["vms", "--output=json"],
        ["-o", "json", "vms"],
        ["--output", "json", "vms", "--host", "h1"],
        ["vms", "--host", "h1", "-ojson"],
    ],
)
def test_the_output_option_goes_before_or_after_the_command(argv):
    args = parse(argv)
    assert (args.command, args.output) == ("vms", "json")


def test_global_options_after_a_nested_command_and_their_defaults():
    args = parse(
        ["migrations", "show", "m-1", "--vm", "g1", "-o", "json", "--coordinator", "h:1", "--rpc-timeout", "5"]
    )
    assert (args.action, args.id, args.vm, args.output, args.coordinator, args.rpc_timeout) == (
        "show",
        "m-1",
        "g1",
        "json",
        "h:1",
        5.0,
    )
    plain = parse(["hosts"])
    assert (plain.output, plain.coordinator, plain.rpc_timeout) == ("table", None, 30.0)
    # given twice, the later one counts (as for any repeated option)
    assert parse(["-o", "json", "hosts", "-o", "table"]).output == "table"


def test_list_filters_before_or_after_and_every_phase_spelling():
    for argv in (
        ["migrations", "--vm", "g1", "--phase", "rolled_back"],
        ["migrations", "--phase", "RolledBack", "--vm", "g1"],  # the old table spelling
        ["migrations", "--phase", "rolled-back", "--vm", "g1"],
        ["migrations", "--phase", "PHASE_ROLLED_BACK", "--vm", "g1"],
    ):
        args = parse(argv)
        assert (args.vm, args.phase, args.action) == ("g1", ["rolled_back"], None), argv


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["vms", "--bogus"], "unrecognized arguments: --bogus"),
        (["drain"], "HOST"),  # (`ferry migrate VM` needs no --to: placement picks the host)
        (["migrations", "--phase", "done"], "invalid choice"),
        (["-o", "yaml", "hosts"], "invalid choice"),
        (["migrations", "show"], "needs an ID, or --vm"),
        (["migrations", "show", "m-1", "--limit", "3"], "unrecognized arguments: --limit"),
        (["top", "--interval", "0"], "must be more than 0"),
        (["top", "--interval", "nan"], "must be more than 0 and finite"),
        (["--rpc-timeout", "inf", "hosts"], "must be more than 0 and finite"),
        (["--rpc-timeout", "1e400", "hosts"], "must be more than 0 and finite"),
        (["--rpc-timeout", "soon", "hosts"], "must be a number"),
        ([], "required"),
    ],
)
def test_usage_errors_say_what_and_exit_64(argv, says, capsys):
    with pytest.raises(UsageError) as exc:
        parse(argv)
    assert says in exc.value.message
    code = cli.main_code(argv + ["--coordinator", NOWHERE])
    assert code == EXIT_USAGE == 64
    err = capsys.readouterr().err
    assert says in err and "usage: ferry" in err


@pytest.mark.parametrize(
    "asks", [["-o", "json"], ["-ojson"], ["-o=json"], ["--output=json"], ["--out", "json"], ["-oJSON"]]
)
async def test_a_usage_error_asked_for_as_json_is_json_too(capsys, asks):
    """Every spelling argparse takes (and JSON in capitals, itself the usage error)."""
    assert await cli.run(["vms", "--bogus", *asks]) == 64
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["reason"] == "USAGE" and "--bogus" in out["error"]["message"]


@pytest.mark.parametrize("asks", [["-o", "table"], ["--offline", "json"]])
async def test_a_usage_error_not_asked_for_as_json_prints_nothing_on_stdout(capsys, asks):
    assert await cli.run(["migrate", "g1", "--bogus", *asks]) == 64
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "flags",
    [
        ("--copy-storage-all", "--copy-storage-inc"),
        ("--postcopy-on-stall",),
        ("--map-bridge", "br-guest"),
    ],
)
async def test_contradictory_flags_are_usage_errors_and_nothing_is_sent(flags, capsys):
    # the coordinator address leads nowhere: had anything been sent, this would exit 3
    code = await cli.run(["--coordinator", NOWHERE, "migrate", "g1", "--to", "host2", *flags])
    assert code == 64
    assert "ferry: USAGE:" in capsys.readouterr().err


def _options(p: argparse.ArgumentParser, path: str = "ferry"):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_flag_has_help_and_every_value_a_default_or_is_required():
    seen = 0
    for path, action in _options(parser()):
        if isinstance(action, VirshElsewhere):  # a virsh flag that only says where Ferry decides it
            continue
        seen += 1
        name = f"{path} {action.option_strings[-1]}"
        assert action.help and action.help != argparse.SUPPRESS, f"{name} has no help"
        takes_value = action.nargs != 0
        if takes_value and not action.required:
            assert "Default:" in action.help, f"{name}: say its default"
    assert seen > 60


@pytest.mark.parametrize(
    ("flag", "unit"),
    [
        ("--bandwidth", "MiB/s"),
        ("--max-downtime", "milliseconds"),
        ("--timeout", "seconds"),
        ("--rpc-timeout", "seconds"),
        ("--interval", "seconds"),
        ("--priority", "higher runs first"),
    ],
)
def test_flags_with_numbers_name_their_unit(flag, unit):
    helps = [a.help or "" for _, a in _options(parser()) if flag in a.option_strings]
    assert helps and all(unit in h for h in helps), helps


def test_help_lists_the_exit_codes_and_the_environment(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "64 ", "130 "):
        assert f"\n  {code}" in out, code
    for var in ("FERRY_COORDINATOR", "FERRY_CONFIG", "XDG_CONFIG_HOME", "NO_COLOR"):
        assert var in out
    assert "docs/cli-json.md" in out and "ferry completion bash" in out


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ferry {version('ferry')}"


def test_bash_completion_completes_commands_and_options():
    script = subprocess.run([FERRY, "completion", "bash"], capture_output=True, text=True, check=True).stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    def complete(*words: str) -> set[str]:
        line = " ".join(("ferry", *words))
        probe = (
            f"{script}\nCOMP_WORDS=(ferry {' '.join(words)}); COMP_CWORD={len(words)}; "
            f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_ferry; printf "%s\\n" "${{COMPREPLY[@]}}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return {w.strip() for w in done.stdout.split()}

    assert {"hosts", "vms", "migrate", "migrations", "top", "completion"} <= complete("")
    assert {"migrate", "migrations"} == complete("mig")
    assert {"--copy-storage-all", "--copy-storage-inc"} <= complete("migrate", "g1", "--copy")
    assert {"show", "watch", "cancel"} <= complete("migrations", "")
    assert {"table", "json"} == complete("vms", "-o", "")


def test_zsh_completion_is_a_compdef(capsys):
    if shutil.which("zsh"):
        script = subprocess.run([FERRY, "completion", "zsh"], capture_output=True, text=True, check=True).stdout
        assert subprocess.run(["zsh", "-n"], input=script, text=True).returncode == 0
    script = cli.completion("zsh")
    assert script.startswith("#compdef ferry") and "migrations" in script and "--copy-storage-all" in script
