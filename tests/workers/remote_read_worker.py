"""One host reading stores in place, for the multi-process remote-read tests.

    python remote_read_worker.py ROWS_NPY SEQ_LEN OUT_NPZ URL [URL ...]

For each store URL (``file:///...``, ``gs://...``) opens the store, builds this host's batches
for the rows in ``ROWS_NPY`` (int64 ``[steps, rows]``) through ``make_host_dataset`` and writes
them to ``OUT_NPZ`` (keys ``<url index>/<name>``) with, per URL, the bytes fetched at open and
per file name, and the classes of the files it read through (never a memory map).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main() -> None:
    rows_path, seq_len, out, urls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    from highnoon.data import TokenStore, make_host_dataset

    rows = np.load(rows_path)
    arrays, infos = {}, []
    for i, url in enumerate(urls):
        store = TokenStore.open(url, verify=True)
        opened = store.bytes_read
        batches = list(make_host_dataset(store, rows, seq_len))
        for key in batches[0]:
            arrays[f"{i}/{key}"] = np.stack([b[key].numpy() for b in batches])
        fetched: dict[str, int] = {}
        for f in store.block_files():
            name = f.label.rsplit("/", 1)[-1]
            fetched[name] = fetched.get(name, 0) + f.bytes_read
        kinds = sorted({type(f).__name__ for f in store.block_files()})
        infos.append({"opened": opened, "fetched": fetched, "kinds": kinds})
    np.savez(out, info=np.array(json.dumps(infos)), **arrays)


if __name__ == "__main__":
    main()
