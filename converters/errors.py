"""Errors every command shares."""


class FerryError(Exception):
    """An error the user can act on: printed as one line, exit status 1."""
