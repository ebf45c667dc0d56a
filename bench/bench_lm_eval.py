"""lm-eval ``loglikelihood`` throughput: the highnoon adapter against a plain unbatched loop.

    python bench/bench_lm_eval.py            # highnoon-tiny, 256 requests, 6 rounds
    python bench/bench_lm_eval.py --quick    # highnoon-nano, 64 requests, 3 rounds

The requests are lm-eval ``loglikelihood`` pairs of byte-tokenized text: a context of 16 to
``max_seq_length - 32`` characters (224 for tiny) and a continuation of 1 to 24 (fixed seed),
the shape of multiple-choice tasks; nothing is truncated. In
this one process, round after round, the same requests are scored by:

* ``adapter``: ``HighNoonEvalLM.loglikelihood`` (sorted longest first, ``--batch_size`` rows per
  model call, lengths rounded up to 32 tokens, one compiled function per padded shape);
* ``loop``: what one writes without it: for each request, one eager call of the model on that
  request alone, then the log-softmax and the continuation's sum in numpy;
* ``batch_size=1``: the adapter's own compiled scorer one request per call (the share of the
  gain that batching alone brings, compilation aside).

The first round of each is discarded (tracing). ratio = adapter requests/s / the other arm's
requests/s over the timed rounds, with a 95% interval from resampling the rounds (seeded bootstrap). The
two arms are checked to agree (every log-likelihood within 1e-3) before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stats import ratio_interval

import highnoon as hn
from highnoon.data import ByteTokenizer
from highnoon.evaluation.lm_eval_model import HighNoonEvalLM

WORDS = ["alpha", "beta", "gamma", "delta", "def f():", "return y", "x = 1", "42", "{[()]}"]


def make_requests(count: int, longest: int, seed: int = 0) -> list:
    from lm_eval.api.instance import Instance

    rng = np.random.default_rng(seed)

    def text(low: int, high: int) -> str:
        length = int(rng.integers(low, high + 1))
        out = ""
        while len(out) < length:
            out += " " + str(rng.choice(WORDS))
        return out[:length]

    return [
        Instance("loglikelihood", {}, (text(16, longest), text(1, 24)), i) for i in range(count)
    ]


def plain_loop(lm: HighNoonEvalLM, requests: list) -> list[float]:
    """One eager model call per request, log-softmax and sum in numpy."""
    results = []
    for request in requests:
        context, continuation = lm.encode_pair(*request.args)
        full = np.array([context + continuation], np.int32)
        logits = lm.model(full[:, :-1], training=False).numpy()[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        first = len(context) - 1
        results.append(float(sum(logp[first + k, t] for k, t in enumerate(continuation))))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    preset, count, rounds = ("highnoon-nano", 64, 3) if args.quick else ("highnoon-tiny", 256, 6)
    model = hn.create_model(preset)
    model.build()
    lm = HighNoonEvalLM(model=model, tokenizer=ByteTokenizer(), batch_size=args.batch_size)
    requests = make_requests(count, model.config.max_seq_length - 32)  # no truncation
    tokens = sum(len(c) + len(x) for c, x in (lm.encode_pair(*r.args) for r in requests))
    ours = [r[0] for r in lm.loglikelihood(requests)]
    theirs = plain_loop(lm, requests)
    worst = float(np.max(np.abs(np.array(ours) - np.array(theirs))))
    assert worst < 1e-3, f"the arms disagree by {worst}"
    single = HighNoonEvalLM(model=model, tokenizer=ByteTokenizer(), batch_size=1)
    arms = {
        "adapter": lm.loglikelihood,
        "loop": lambda r: plain_loop(lm, r),
        "batch_size=1": single.loglikelihood,
    }
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(rounds + 1):  # round 0: tracing, discarded
        for arm, run in arms.items():
            started = time.perf_counter()
            run(requests)
            times[arm].append(time.perf_counter() - started)
    print(
        f"{preset}: {count} loglikelihood requests ({tokens} tokens), batch_size="
        f"{args.batch_size}, {rounds} timed rounds; arms agree within {worst:.1e}"
    )
    adapter = np.array(times["adapter"][1:])
    for arm in arms:
        seconds = np.array(times[arm][1:])
        print(
            f"  {arm:12s} {count / seconds.mean():8.1f} requests/s ({tokens / seconds.mean():,.0f} tok/s)"
        )
    for arm in ("loop", "batch_size=1"):
        seconds = np.array(times[arm][1:])
        low, high = ratio_interval(seconds, adapter)
        print(
            f"  ratio adapter/{arm} {seconds.sum() / adapter.sum():.2f}x "
            f"(95% interval {low:.2f}-{high:.2f})"
        )


if __name__ == "__main__":
    main()
