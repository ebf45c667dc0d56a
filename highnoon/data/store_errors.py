"""The errors of the token store, in a module of their own so that the store's reader
(``store.py``), writer (``shards.py``) and block files (``blocks.py``, ``remote_blocks.py``) raise
the same classes without importing each other. ``highnoon.data.store`` re-exports them."""

from __future__ import annotations


class StoreError(ValueError):
    """A store is missing, incomplete, or does not match its manifests (corrupt: rebuild it)."""

    __init__ = Exception.__init__  # as InvalidArgumentError's: the class survives AutoGraph


class StoreExistsError(ValueError):
    """``build_token_store`` was asked to write where a store already is."""


class VocabularyMismatchError(ValueError):
    """A store holds token ids the model cannot embed (not corruption: rebuilding won't help)."""
