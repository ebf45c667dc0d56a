"""Does a checkpoint hold exactly the weights of a model? Checked before restoring.

TensorFlow's restore matches values to variables by their path in the object graph
(``model/block_0/attn/q/kernel``); values no variable asks for are silently skipped and a shape
that differs fails deep inside TF with the variable's internal name. ``load_model`` restores a
model described by a ``model_config.json`` that may have been edited or belong to another run,
so it compares both sides by path first: every checkpoint value under the model must meet a model
weight of the same shape, and every model weight a value. The checkpoint's own object graph gives
the paths, so this works whatever other entries (optimizer, step, data position) it holds.
"""

from __future__ import annotations

import re
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from highnoon.models.config import ModelConfig
from highnoon.utils.validation import InvalidArgumentError

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE = "VARIABLE_VALUE"
_SHOWN = 6  # paths listed in a message before "... (N in all)"


def checkpoint_keys(prefix: str, root: str = "model") -> dict[str, str] | None:
    """``{path: checkpoint key}`` of every variable value under the checkpoint's ``root``
    entry, or None when the checkpoint has no object graph or no such entry. The key reads the
    value (``reader.get_tensor(key)``); the path is how the model names the variable."""
    # The reader of the prefix itself: load_checkpoint would take a ram:// prefix for a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    if not reader.has_tensor(_GRAPH_KEY):
        return None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    start = next((c.node_id for c in graph.nodes[0].children if c.local_name == root), None)
    if start is None:
        return None
    keys: dict[str, str] = {}
    stack, seen = [(start, root)], set()
    while stack:
        node_id, path = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == _VALUE:
                keys[path] = attribute.checkpoint_key
        stack.extend((c.node_id, f"{path}/{c.local_name}") for c in node.children)
    return keys


def checkpoint_values(prefix: str, root: str = "model") -> dict[str, tuple[int, ...]] | None:
    """``{path: shape}`` of every variable value under the checkpoint's ``root`` entry, or None
    when the checkpoint has no object graph or no such entry."""
    keys = checkpoint_keys(prefix, root)
    if keys is None:
        return None
    shapes = tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
    return {path: tuple(shapes[key]) for path, key in keys.items()}


def model_variables(model: Any, root: str = "model") -> dict[str, Any]:
    """``{path: variable}`` of a built model, each named as a checkpoint names it."""
    variables: dict[str, Any] = {}
    stack, seen = [(model, root)], set()
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, keras.Variable | tf.Variable):
            variables[path] = obj
            continue
        children = tf.train.TrackableView.children(obj)
        stack.extend((child, f"{path}/{name}") for name, child in children.items())
    return variables


def model_weights(model: Any, root: str = "model") -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of a built model's variables, named as a checkpoint names them."""
    return {
        path: tuple(int(d) for d in variable.shape)
        for path, variable in model_variables(model, root).items()
    }


def check_checkpoint_matches(
    prefix: str, model: Any, config: ModelConfig, config_path: str
) -> None:
    """Refuse, before any restore, a checkpoint whose model values do not fit ``model`` one to
    one: values the model would not consume, weights it holds no value for, or shapes that
    differ. The message names the paths and shapes, the config fields the checkpoint implies
    where they differ, and that ``config_path`` disagrees with the checkpoint."""
    values = checkpoint_values(prefix)
    if values is None:
        return  # no object graph: the restore's own matching is all there is
    weights = model_weights(model)
    unused = sorted(set(values) - set(weights))
    missing = sorted(set(weights) - set(values))
    mismatched = sorted(p for p in set(values) & set(weights) if values[p] != weights[p])
    if not (unused or missing or mismatched):
        return
    problems = []
    if mismatched:
        problems.append(
            "checkpoint values that do not fit the model's weights: "
            + listed(
                f"{p} {list(values[p])} vs model weight {list(weights[p])}" for p in mismatched
            )
        )
    if unused:
        problems.append(
            "checkpoint values the model would not consume: "
            + listed(f"{p} {list(values[p])}" for p in unused)
        )
    if missing:
        problems.append(
            "model weights the checkpoint holds no value for: "
            + listed(f"{p} {list(weights[p])}" for p in missing)
        )
    implied = _implied_fields(values, config)
    hint = f"; the checkpoint implies {implied}" if implied else ""
    raise InvalidArgumentError(
        f"load_model: {config_path} disagrees with checkpoint {prefix!r}: "
        + "; ".join(problems)
        + f"{hint}. Use the model_config.json the run wrote beside its checkpoint (or fix the "
        "fields named here); nothing was loaded"
    )


def listed(items: Any) -> str:
    """The first few items of a message's list, then how many there are in all."""
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def _implied_fields(values: dict[str, tuple[int, ...]], config: ModelConfig) -> str:
    """The config fields the checkpoint's shapes reveal, where they differ from ``config``."""
    facts: dict[str, Any] = {}
    embedding = values.get("model/embedding")
    if embedding is not None and len(embedding) == 2:
        facts["vocab_size"], facts["d_model"] = embedding
    blocks = {int(m.group(1)) for p in values if (m := re.match(r"model/block_(\d+)/", p))}
    if blocks:
        facts["num_layers"] = max(blocks) + 1
    facts["tie_embeddings"] = "model/lm_head" not in values
    differ = [name for name, value in facts.items() if getattr(config, name) != value]
    if not differ:
        return ""
    implied = ", ".join(f"{name}={facts[name]!r}" for name in differ)
    stated = ", ".join(f"{name}={getattr(config, name)!r}" for name in differ)
    return f"{implied} where the config says {stated}"
