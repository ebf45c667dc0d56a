"""Generate text from a trained HighNoon model.

    python -m launch.generate --checkpoint=/tmp/hn/checkpoints --prompt="def main("
    python -m launch.generate --checkpoint=model.keras --prompt="Once" --temperature=0
    python -m launch.generate --model=highnoon-nano --prompt="Hi"   # untrained: smoke test only

`--checkpoint` is a `.keras` file, a `tf.train.Checkpoint` directory (latest checkpoint) or a
checkpoint prefix (`dir/ckpt-3`); checkpoints need `model_config.json` in their directory (the
Trainer writes it). Without `--checkpoint`, `--model` names a preset with fresh weights.
"""

from __future__ import annotations

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, ".keras file, checkpoint directory or checkpoint prefix")
flags.DEFINE_string("model", "highnoon-tiny", "preset used when --checkpoint is not given")
flags.DEFINE_string("prompt", "", "text to continue")
flags.DEFINE_string("tokenizer", "byte", "'byte' or a SentencePiece .model path")
flags.DEFINE_integer("max_length", 256, "total tokens, prompt included")
flags.DEFINE_float("temperature", 1.0, "0 is greedy decoding")
flags.DEFINE_integer("top_k", 50, "sample among the k most likely tokens (0 disables)")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 disables)")
flags.DEFINE_integer("seed", 0, "sampling seed (same seed, same text)")


def load_for_generation(checkpoint: str | None, model_name: str, tokenizer_spec: str = "byte"):
    """(model, tokenizer) from a checkpoint, or a fresh preset when `checkpoint` is None."""
    from highnoon.data.tokenizers import check_vocab_fits, load_tokenizer
    from highnoon.models import create_model, load_model

    tokenizer = load_tokenizer(tokenizer_spec)
    if checkpoint:
        model = load_model(checkpoint)
        check_vocab_fits(tokenizer, model.config.vocab_size)
    else:
        logging.warning("no --checkpoint: %s has untrained weights", model_name)
        model = create_model(model_name, tokenizer=tokenizer)
    model.tokenizer = tokenizer
    return model, tokenizer


def main(argv: list[str]) -> None:
    del argv
    model, _ = load_for_generation(FLAGS.checkpoint, FLAGS.model, FLAGS.tokenizer)
    text = model.generate(
        FLAGS.prompt,
        max_length=FLAGS.max_length,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        seed=FLAGS.seed,
    )
    print(text)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
