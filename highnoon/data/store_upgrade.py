"""A format-2 store's manifests rewritten as format 3, in place, without reading its data.

Format 2 kept every block CRC32C of a shard as a JSON list in its ``shard.json``, so the first
read of a shard parsed a list that grows with the shard (about 2.3 MB of JSON a shard of a
1e9-sample store, 0.5 s for a first batch touching 15 shards). Format 3 keeps them in binary
side files read by page (``shards.write_file_checksums``). ``upgrade_store`` moves the recorded
CRCs (not recomputed: a block damaged since the build stays an error) into side files, writes
each ``shard.json`` again, then ``manifest.json`` with the new fingerprint, last.

Every file is written beside its target and renamed into place, so a store whose files are
hard links of another's leaves the other untouched, and a killed upgrade is finished by running
it again (a shard already upgraded is kept once its side files check out). The data files are
never written. The fingerprint changes (it hashes the shard manifests), so stored orders are
stamped with the new one by their own module (``curriculum.stored_order.restamp_orders``), and a
run resumed across the upgrade sees changed data (``allow_data_change``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from highnoon.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    SHARD_MANIFEST,
    SIDECAR_PAGE_BYTES,
    canonical_json,
    crc32c_file,
    shard_summary,
    sidecar_name,
    store_fingerprint,
    write_file_checksums,
)
from highnoon.data.store import StoreError, TokenStore
from highnoon.utils.files import atomic_write_bytes, atomic_write_text, is_remote
from highnoon.utils.hashing import sha256_hex
from highnoon.utils.validation import InvalidArgumentError


def upgrade_store(path: str) -> dict[str, Any]:
    """Rewrite the local store at ``path`` as format 3 (module docstring); returns
    ``{"path", "old_fingerprint", "fingerprint", "shards", "upgraded"}`` (shards rewritten now).
    A store already in format 3 is left as it is. ``StoreError`` for a store that does not
    open, or a ``shard.json`` that matches neither the manifest nor a finished upgrade."""
    if not isinstance(path, str) or is_remote(path):
        raise InvalidArgumentError(
            f"path={path!r}: upgrade_store rewrites a local store in place; copy a remote store "
            "locally, upgrade it, and copy it back (or prepare it again)"
        )
    root = os.path.abspath(os.path.expanduser(path))
    store = TokenStore.open(root)  # the manifest and every file's size checked first
    manifest = store.manifest
    old = manifest["fingerprint"]
    metas, upgraded = [], 0
    for entry in manifest["shards"]:
        meta, changed = _upgraded_shard(root, entry)
        metas.append(meta)
        upgraded += changed
    result = {"path": root, "old_fingerprint": old, "shards": len(metas), "upgraded": upgraded}
    if manifest["format_version"] == FORMAT_VERSION and not upgraded:
        return {**result, "fingerprint": old}
    names = [entry["name"] for entry in manifest["shards"]]
    new = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "fingerprint": store_fingerprint(metas),
        "shards": [shard_summary(name, meta) for name, meta in zip(names, metas)],
    }
    atomic_write_text(os.path.join(root, MANIFEST), json.dumps(new, sort_keys=True))
    return {**result, "fingerprint": new["fingerprint"]}


def _upgraded_shard(root: str, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Shard ``entry``'s format-3 ``shard.json`` (written now when it was format 2) and whether
    it was written."""
    directory = os.path.join(root, entry["name"])
    manifest_path = os.path.join(directory, SHARD_MANIFEST)
    with open(manifest_path, "rb") as handle:
        raw = handle.read()
    meta = json.loads(raw)
    inline = [name for name, f in meta["files"].items() if "crc32c" in f]
    if not inline:  # upgraded by a run that was killed before the manifest: check its side files
        _check_side_files(directory, meta, entry["name"])
        return meta, False
    if sha256_hex(raw) != entry["sha256"]:
        raise StoreError(
            f"store {root!r}, {entry['name']}: {SHARD_MANIFEST} has sha256 {sha256_hex(raw)}, the "
            f"manifest records {entry['sha256']}; the store is corrupt, rebuild it"
        )
    files = {}
    for name, f in meta["files"].items():
        if "crc32c" in f:
            crcs = f["crc32c"]
            f = write_file_checksums(os.path.join(directory, name), int(f["block_bytes"]), crcs)
        files[name] = f
    meta = {**meta, "files": files}
    atomic_write_bytes(manifest_path, canonical_json(meta))
    return meta, True


def _check_side_files(directory: str, meta: dict[str, Any], shard: str) -> None:
    """Every side file of an upgraded shard matches the page CRCs its ``shard.json`` records."""
    for name, f in meta["files"].items():
        side = os.path.join(directory, sidecar_name(name))
        if not os.path.isfile(side) or crc32c_file(side, SIDECAR_PAGE_BYTES) != f["crc32c_pages"]:
            raise StoreError(
                f"{shard}/{sidecar_name(name)}: missing or not the one {SHARD_MANIFEST} records; "
                "the upgrade was interrupted in a way it cannot finish, rebuild the store"
            )
