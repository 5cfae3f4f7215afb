"""Hearth's database: the schema, its migrations and the encrypted credential store."""

from hearth.errors import HearthError


class StoreError(HearthError):
    """The store could not read or write what was asked."""
