"""The chief's small JSON value, given to every host (e.g. scores only the chief computed).

One all-gather of a fixed-size int32 buffer: the chief's first replica writes the value's UTF-8
bytes (length first), every other replica zeros; each host reads the chief's row. Every host
calls it at the same point (it is a collective), and each gets the same value back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from highnoon.distribute.consistency import all_gather_fn
from highnoon.utils.validation import InvalidArgumentError

MAX_BYTES = 1 << 16  # scores of a few hundred metrics fit many times over


def broadcast_json(strategy: Any, value: Any, *, chief: bool) -> Any:
    """``value`` (JSON-able; only the chief's counts) as every host receives it from the chief."""
    import tensorflow as tf

    row = np.zeros((1, MAX_BYTES + 1), np.int32)
    if chief:
        data = json.dumps(value, sort_keys=True).encode("utf-8")
        if len(data) > MAX_BYTES:
            raise InvalidArgumentError(
                f"broadcast_json: the value takes {len(data)} bytes of JSON, more than "
                f"{MAX_BYTES}; broadcast less (e.g. fewer metrics)"
            )
        row[0, 0] = len(data)
        row[0, 1 : len(data) + 1] = np.frombuffer(data, np.uint8)
    with strategy.scope():
        result = all_gather_fn(strategy)(tf.constant(row))
    gathered = strategy.experimental_local_results(result)[0].numpy()
    sent = gathered[0]  # replica 0 lives on the chief
    return json.loads(sent[1 : int(sent[0]) + 1].astype(np.uint8).tobytes().decode("utf-8"))
