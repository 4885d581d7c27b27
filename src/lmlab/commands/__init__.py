"""Subcommands added by methods. Each module defines `register(subparsers)`, adds its parser(s) and sets
`func=` to a handler `func(args) -> int`. Raise `lmlab.utils.LmlabError` for user errors."""
