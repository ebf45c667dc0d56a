"""Model benchmark: highnoon-tiny training throughput as MFU, and cached vs uncached generation.

    python bench/bench_model.py

1. Matmul peak: a 2048x2048 float32 `tf.matmul` under XLA, best of several runs, in this process
   (FLOPs = 2 * n^3). This is the "peak" the utilisation is measured against.
2. Training: an XLA-compiled GradientTape + AdamW step on highnoon-tiny, batch 8 x 256 tokens.
   Model FLOPs per token (PaLM appendix B convention, forward + backward, no rematerialisation):
       6 * N  +  12 * L * d * s
   with N = non-embedding parameters + V*d (the output head is a real matmul; the embedding
   lookup is free), L layers, d = d_model, s = sequence length (attention scores and the
   weighted sum; counted over the full s x s square, as is customary, though causal masking
   makes half of it wasted work). MFU = model FLOPs/s / matmul peak.
3. Generation (greedy, to the full length, XLA): tokens/s with the key/value cache versus
   re-running the full forward pass per token, at several total lengths. The cached path costs
   one position per token, the uncached one the whole max_length buffer, so the speed-up grows
   with the length.
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import itertools
import time

import keras
import numpy as np
import tensorflow as tf

from highnoon.models import create_model
from highnoon.training.step import StepConfig, TrainStep

PROMPT = [1, *range(40, 47)]  # 8 tokens


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 10) -> float:
    """The machine's float32 matmul peak (FLOP/s): the best of XLA matmuls of a few square sizes,
    each timed as the best of ``repeats`` runs (the least disturbed by other processes)."""
    best = 0.0
    for n in sizes:
        a = tf.random.stateless_normal((n, n), seed=[1, 2])
        b = tf.random.stateless_normal((n, n), seed=[3, 4])
        mm = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=True)
        mm(a, b).numpy()
        seconds = best_time(lambda mm=mm, a=a, b=b: mm(a, b).numpy(), repeats)
        best = max(best, 2 * n**3 / seconds)
    return best


def token_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A learnable counting pattern (x, x+1, ... mod vocab) from random starts; all tokens count."""
    starts = np.random.default_rng(seed).integers(3, vocab, size=(batch, 1))
    tokens = ((starts + np.arange(seq + 1)[None, :]) % (vocab - 3) + 3).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((batch, seq), np.float32),
    }


def train_throughput(batch: int = 8, seq: int = 256, steps: int = 10) -> dict[str, float]:
    """Tokens/s of the Trainer's own step (``TrainStep``, XLA, one device) on one batch."""
    model = create_model("highnoon-tiny")
    model.build()
    c = model.config
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(model.trainable_variables)
    train = TrainStep(model, optimizer, tf.distribute.get_strategy()).train_fn(
        StepConfig(jit_compile=True)
    )
    batches = iter(tf.data.Dataset.from_tensors(token_batch(batch, seq, c.vocab_size)).repeat())
    start = time.perf_counter()
    train(batches, 1)[0].numpy()
    compile_s = time.perf_counter() - start
    train(batches, 1)[0].numpy()
    start = time.perf_counter()
    for _ in range(steps):
        losses, _ = train(batches, 1)
    losses.numpy()
    elapsed = time.perf_counter() - start
    n = c.non_embedding_parameters() + c.vocab_size * c.d_model
    flops_per_token = 6 * n + 12 * c.num_layers * c.d_model * seq
    tokens_per_s = batch * seq * steps / elapsed
    return {
        "tokens_per_s": tokens_per_s,
        "flops_per_s": tokens_per_s * flops_per_token,
        "flops_per_token": flops_per_token,
        "compile_s": compile_s,
    }


def generation_speed(lengths=(64, 128, 256)) -> list[dict[str, float]]:
    model = create_model("highnoon-tiny")
    model.build()
    rows = []
    for length in lengths:
        row = {"length": length}
        for use_cache in (True, False):

            def run(length=length, use_cache=use_cache):
                out = model.generate(
                    PROMPT, max_length=length, temperature=0, eos_id=-1, use_cache=use_cache
                )
                assert len(out) == length
                return out

            run()  # compile
            seconds = best_time(run, 2)
            row["cached" if use_cache else "uncached"] = (length - len(PROMPT)) / seconds
        row["speedup"] = row["cached"] / row["uncached"]
        rows.append(row)
    return rows


def main() -> None:
    t0 = time.perf_counter()
    peak = matmul_peak()
    train = train_throughput()
    gen = generation_speed()
    mfu = train["flops_per_s"] / peak
    print("| measurement | value |")
    print("|---|---:|")
    print(
        f"| matmul peak (best of 1024^2, 2048^2, 3072^2 float32, XLA) | {peak / 1e9:.1f} GFLOP/s |"
    )
    print(
        f"| highnoon-tiny train step, batch 8 x 256, XLA | {train['tokens_per_s']:,.0f} tokens/s |"
    )
    print(f"| model FLOPs per token (6N + 12Lds) | {train['flops_per_token'] / 1e6:.2f} MFLOP |")
    print(f"| model FLOPs utilisation (MFU vs matmul peak) | {100 * mfu:.1f}% |")
    print()
    print("| generation length | cached tokens/s | uncached tokens/s | cache speed-up |")
    print("|---:|---:|---:|---:|")
    for r in gen:
        print(
            f"| {r['length']} | {r['cached']:,.0f} | {r['uncached']:,.0f} | {r['speedup']:.1f}x |"
        )
    speedups = [r["speedup"] for r in gen]
    grows = all(a < b for a, b in itertools.pairwise(speedups))
    print(f"\ncache speed-up grows with length: {grows}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
