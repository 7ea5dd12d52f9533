"""CLI subcommands. Each module exposes ``add_parser(subparsers)`` which registers the command
and sets ``run=callable(args) -> int`` as its default."""
