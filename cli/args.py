"""What the console script needs to know of argv before the CLI is imported."""

from __future__ import annotations


def command_name(args: list[str]) -> str:
    """The subcommand's name: the first word that is neither an option nor -H's value."""
    it = iter(args)
    for a in it:
        if a in ("-H", "--host"):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return ""
