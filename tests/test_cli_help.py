"""Every ``vtprune`` command: listed with a one-line description, ``--help`` shows an example."""

import argparse

import pytest

from vtprune.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) for every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = [argv for argv, _ in _commands(build_parser())]


def test_every_top_level_command_is_listed_with_a_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    top = {argv[0] for argv in COMMANDS}
    assert top >= {"demo", "strategies", "adapters", "plugins", "show", "bench", "grounding"}
    for name in top:
        assert name in out
    assert all(a.help for a in build_parser()._subparsers._group_actions[0]._choices_actions)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_shows_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    example = out.split("example:", 1)[1]
    assert f"vtprune {' '.join(argv)}" in example


def test_every_bench_subcommand_is_covered():
    assert {("bench", n) for n in ("speed", "overhead", "grounding", "grounding-sweep")} <= set(COMMANDS)
