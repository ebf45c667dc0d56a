"""``highnoon``: a highnoon run as an lm-evaluation-harness model.

    highnoon-lm-eval --model highnoon --model_args model_dir=/runs/r1,batch_size=16 \\
        --tasks hellaswag
    lm_eval.simple_evaluate(model=HighNoonEvalLM(model_dir="/runs/r1"), tasks=[...])

``model_args``: ``model_dir`` (a ``highnoon-train --model_dir`` or ``Trainer.train``
``checkpoint_dir``), optional ``checkpoint`` (a prefix such as ``ckpt-200``, relative to
``model_dir`` or absolute; default the newest), ``batch_size`` (rows per model call, default
8), ``max_length`` (tokens of context per call, default the model's ``max_seq_length``),
``max_gen_toks`` (default 256) and ``tokenizer`` (default: the one the run recorded). The
in-loop evaluation passes ``model=`` and ``tokenizer=`` objects instead of a directory.

Text is encoded as the data pipeline encodes training rows: BOS, then the text's ids. The
three request kinds:

* ``loglikelihood``: lm-eval's ``(context, continuation)``; trailing whitespace of the context
  moves to the continuation, the pair is encoded whole and the continuation is the ids after
  the context's (as lm-eval's Hugging Face model does); scored in batches (``TokenScorer``).
* ``loglikelihood_rolling``: every token of the text once, in windows of ``max_length``
  (``rolling_windows``), all windows of all requests batched together.
* ``generate_until``: greedy (sampling arguments are refused), batched with a key/value cache
  (``greedy_batch``), stopping a row at EOS, at ``max_gen_toks`` or at the first ``until``
  string, which is cut off with what follows it.

lm-eval has no plugin entry point for models (0.4.13 reads only its own ``MODEL_MAPPING``), so
importing this module registers the name ``highnoon``, and ``highnoon-lm-eval`` (this package's
``cli``) registers it and then runs lm-eval's own command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM

from highnoon.evaluation.decoding import greedy_batch
from highnoon.evaluation.scoring import TokenScorer, rolling_windows
from highnoon.utils import validation as v

MODEL_NAME = "highnoon"
SAMPLING_KWARGS = ("do_sample", "temperature", "top_p", "top_k")


def load_run(model_dir: str, checkpoint: str | None = None, tokenizer: Any = None):
    """(model, tokenizer) of a run: the checkpoint (newest unless named), the model config
    saved beside it and the tokenizer the run recorded (or ``tokenizer``). A directory with no
    checkpoint is an error naming it and what is missing, before anything is built."""
    import tensorflow as tf

    from highnoon.data.saved_tokenizer import RECORD_FILE, load_saved_tokenizer
    from highnoon.data.tokenizers import check_vocab_fits, load_tokenizer
    from highnoon.models import load_model

    model_dir = v.check_str("model_dir", model_dir)
    if not tf.io.gfile.isdir(model_dir):
        raise v.InvalidArgumentError(
            f"model_dir={model_dir!r} is not a directory; pass the --model_dir of a "
            "highnoon-train run (or a Trainer.train checkpoint_dir)"
        )
    if checkpoint is None:
        prefix = tf.train.latest_checkpoint(model_dir)
        if prefix is None:
            raise v.InvalidArgumentError(
                f"model_dir={model_dir!r} holds no checkpoint (no 'checkpoint' index file and "
                "no ckpt-N.index): train into it first, or pass the model_dir of a run that "
                "saved at least one checkpoint"
            )
    else:
        prefix = checkpoint if os.path.isabs(checkpoint) else os.path.join(model_dir, checkpoint)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise v.InvalidArgumentError(
                f"checkpoint={checkpoint!r}: {prefix}.index does not exist; name a checkpoint "
                f"of model_dir={model_dir!r} such as ckpt-100, or leave it out for the newest"
            )
    if tokenizer is not None:
        tokenizer = load_tokenizer(tokenizer)
    else:
        tokenizer = load_saved_tokenizer(model_dir)
        if tokenizer is None:
            raise v.InvalidArgumentError(
                f"model_dir={model_dir!r} records no tokenizer ({RECORD_FILE} is missing: a run "
                "written before runs kept their tokenizer); pass it as model_args "
                "tokenizer=byte or tokenizer=/path/to/tokenizer.json"
            )
    model = load_model(prefix)
    check_vocab_fits(tokenizer, model.config.vocab_size)
    return model, tokenizer


def _positive(name: str, value: Any, default: int) -> int:
    """lm-eval passes model_args as strings and ``batch_size`` as ``"auto"`` or None."""
    if value is None or value == "auto":
        return default
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise v.InvalidArgumentError(f"{name}={value!r} must be a positive integer")
        value = int(value)
    return v.check_positive_int(name, value)


class HighNoonEvalLM(LM):
    """A highnoon model and tokenizer behind lm-eval's ``LM`` interface (module docstring)."""

    def __init__(
        self,
        model_dir: str | None = None,
        checkpoint: str | None = None,
        batch_size: int | str | None = 8,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        tokenizer: Any = None,
        *,
        model: Any = None,
        **ignored: Any,  # lm-eval's device, max_batch_size: one TensorFlow device is used
    ) -> None:
        super().__init__()
        if (model is None) == (model_dir is None):
            raise v.InvalidArgumentError(
                "HighNoonEvalLM needs model_dir=... (a run's directory) or model=... with "
                "tokenizer=..., exactly one of them"
            )
        if model is None:
            model, tokenizer = load_run(model_dir, checkpoint, tokenizer)
        elif tokenizer is None:
            raise v.InvalidArgumentError("HighNoonEvalLM(model=...) needs tokenizer=... too")
        self.model = model
        self.tokenizer = tokenizer
        limit = int(model.config.max_seq_length)
        self.batch_size = _positive("batch_size", batch_size, 8)
        self.max_length = min(_positive("max_length", max_length, limit), limit)
        self.max_gen_toks = _positive("max_gen_toks", max_gen_toks, 256)
        self.scorer = TokenScorer(model, batch_size=self.batch_size, max_length=self.max_length)

    # -- encoding ----------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(BOS + context ids, continuation ids), the pair encoded whole."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        bos = int(self.tokenizer.bos_id)
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context) if context else []
        return [bos, *whole[: len(context_ids)]], list(whole[len(context_ids) :])

    # -- lm-eval's interface -------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*request.args) for request in requests]
        results = self.scorer.score(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        windows, owners = [], []
        bos = int(self.tokenizer.bos_id)
        for index, request in enumerate(requests):
            (text,) = request.args
            for pair in rolling_windows(self.tokenizer.encode(text), bos, self.max_length):
                windows.append(pair)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.scorer.score(windows)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        groups: dict[str, list[int]] = {}
        settings: dict[str, tuple[list[str], int]] = {}
        for index, request in enumerate(requests):
            key, until, max_new = self._generation_settings(request.args[1])
            groups.setdefault(key, []).append(index)
            settings[key] = (until, max_new)
        answers = [""] * len(requests)
        for key, members in groups.items():
            until, max_new = settings[key]
            for index, text in zip(
                members, self._generate([requests[i] for i in members], until, max_new)
            ):
                answers[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return answers

    # -- generation ----------------------------------------------------------------------------
    def _generation_settings(self, kwargs: Any) -> tuple[str, list[str], int]:
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_new = _positive("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks), 256)
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
            raise v.InvalidArgumentError(
                f"generation arguments {kwargs!r}: the highnoon lm-eval model decodes greedily "
                "only; drop do_sample / set temperature=0"
            )
        max_new = min(max_new, self.max_length - 1)
        return json.dumps([until, max_new]), list(until), max_new

    def _generate(self, requests: Sequence[Any], until: list[str], max_new: int) -> list[str]:
        bos = int(self.tokenizer.bos_id)
        keep = self.max_length - max_new  # prompt tokens that fit beside the new ones
        prompts = [[bos, *self.tokenizer.encode(r.args[0])][-keep:] for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        texts = [""] * len(prompts)
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]

            def stop(row: int, ids: list[int], batch=batch) -> bool:
                text = self.tokenizer.decode(ids)
                return any(s in text for s in until)

            outputs = greedy_batch(
                self.model,
                [prompts[i] for i in batch],
                max_new,
                eos_id=int(self.tokenizer.eos_id),
                pad_id=int(self.tokenizer.pad_id),
                stop=stop if until else None,
            )
            for index, ids in zip(batch, outputs):
                texts[index] = cut_at_stop(self.tokenizer.decode(ids), until)
        return texts


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to (without) the earliest of the ``until`` strings it contains."""
    cut = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def register() -> type[HighNoonEvalLM]:
    """Registers ``HighNoonEvalLM`` as lm-eval's model ``highnoon`` (idempotent); lm-eval's own
    models are registered first, so they stay available in the same process."""
    import lm_eval.models  # noqa: F401  (its lazy registrations; an empty registry loads them)
    from lm_eval.api.registry import model_registry

    if model_registry.get(MODEL_NAME, None) is not HighNoonEvalLM:
        model_registry.register(MODEL_NAME)(HighNoonEvalLM)
    return HighNoonEvalLM


register()
