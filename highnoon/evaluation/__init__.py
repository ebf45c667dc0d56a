"""Scoring highnoon models with lm-evaluation-harness (the optional ``highnoon[eval]`` extra).

``HighNoonEvalLM`` (``lm_eval_model.py``) is lm-eval's model ``highnoon``: a run's checkpoint,
config and tokenizer behind ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``,
batched (``scoring.py``) and decoding with a key/value cache (``decoding.py``). ``tasks.py``
checks task names before any model is loaded and flattens scores; ``evaluate_run`` scores a
model_dir from Python; the Trainer's in-loop evaluation (``lm_eval_tasks``) uses the same parts
on the live weights.

Layering: this package uses ``utils``, ``data`` and ``models``; ``training`` uses it. Importing
it imports neither TensorFlow nor lm-eval (both load on first use).
"""

from __future__ import annotations

from highnoon.utils.lazy import lazy_getattr

_LAZY = {
    "HighNoonEvalLM": "highnoon.evaluation.lm_eval_model",
    "load_run": "highnoon.evaluation.lm_eval_model",
    "register": "highnoon.evaluation.lm_eval_model",
    "evaluate_run": "highnoon.evaluation.harness",
    "check_tasks": "highnoon.evaluation.harness",
    "flat_scores": "highnoon.evaluation.tasks",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("highnoon.evaluation", _LAZY, globals())
