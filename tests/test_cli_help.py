"""Every command's `--help` shows its defaults and every option has help text (issue 24, CLI conventions)."""

import argparse

from lmlab.cli import ConfigDefault, HelpFormatter, build_parser


def parsers(parser, path=("lmlab",)):
    """(command path, parser) of the top-level parser and every subcommand under it, recursively."""
    yield path, parser
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share a parser
                    seen.add(id(sub))
                    yield from parsers(sub, path + (name,))


def arguments(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction))]


def rendered(parser, action) -> str:
    fmt = parser._get_formatter()
    fmt.add_argument(action)
    return " ".join(fmt.format_help().split())


def test_every_argument_has_help_and_every_default_is_shown():
    missing, hidden = [], []
    for path, parser in parsers(build_parser()):
        assert issubclass(parser.formatter_class, HelpFormatter), " ".join(path)
        for action in arguments(parser):
            name = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(name)
                continue
            default = action.default.value() if isinstance(action.default, ConfigDefault) else action.default
            shown = default is None or default is False or default == argparse.SUPPRESS or "(default" in action.help \
                or " ".join(str(action.default).split()) in rendered(parser, action)  # in words, or the value
            if action.option_strings and not shown:
                hidden.append(f"{name} (default {default})")
    assert not missing, f"{len(missing)} arguments without help: {missing}"
    assert not hidden, f"{len(hidden)} defaults not shown in --help: {hidden}"


def test_help_shows_defaults_once_and_not_none():
    help_ = " ".join(dict(parsers(build_parser()))[("lmlab", "ttt")].format_help().split())
    assert "(default: 32)" in help_ and "(default: None)" not in help_ and "(default: False)" not in help_
