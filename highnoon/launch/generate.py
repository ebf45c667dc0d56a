"""Generate text from a trained HighNoon model.

    highnoon-generate --checkpoint=/tmp/highnoon_quickstart --prompt="def main("
    highnoon-generate --checkpoint=/tmp/highnoon_quickstart/ckpt-21 --prompt="Once" --temperature=0
    highnoon-generate --checkpoint=model.keras --prompt="Once"
    highnoon-generate --model=highnoon-nano --prompt="Hi"   # untrained: a smoke test only

(In a checkout, `python -m launch.generate ...` is the same program.) `--checkpoint` is the
`--model_dir` of a `highnoon-train` run (it writes its checkpoints `ckpt-N` and
`model_config.json` directly there; the latest checkpoint is used), one checkpoint prefix in it
(`<model_dir>/ckpt-N`), or a `.keras` file. Any `tf.io.gfile` path works (`gs://...`). Without
`--checkpoint`, `--model` names a preset with fresh weights.
"""

from __future__ import annotations

import os

from absl import flags, logging

from highnoon.launch import program
from highnoon.utils import validation

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None, "A highnoon-train --model_dir, a checkpoint prefix in it, or a .keras file."
)
flags.DEFINE_string("model", "highnoon-tiny", "Preset used when --checkpoint is not given.")
flags.DEFINE_string("prompt", "", "Text to continue.")
flags.DEFINE_string(
    "tokenizer",
    None,
    "'byte', a SentencePiece .model path or a Hugging Face tokenizer.json path (default: the "
    "tokenizer the --checkpoint run recorded, else 'byte').",
)
flags.DEFINE_integer("max_length", 256, "Total tokens, prompt included.")
flags.DEFINE_float("temperature", 1.0, "0 is greedy decoding.")
flags.DEFINE_integer("top_k", 50, "Sample among the k most likely tokens (0 disables).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1 disables).")
flags.DEFINE_integer("seed", 0, "Sampling seed (same seed, same text).")

program.check_flag("checkpoint", validation.check_str)
program.check_flag("max_length", validation.check_int, minimum=2)
program.check_flag("temperature", validation.check_float, minimum=0.0)
program.check_flag("top_k", validation.check_int, minimum=0)
program.check_flag("top_p", validation.check_fraction, allow_zero=False)

CHECKPOINT_HINT = (
    "pass the --model_dir of a highnoon-train run, a checkpoint prefix in it "
    "(<model_dir>/ckpt-N) or a .keras file"
)


def run_tokenizer(checkpoint: str):
    """The tokenizer the run of `checkpoint` (its model_dir, a prefix or a .keras file in it)
    recorded, or None (a run written before runs kept their tokenizer)."""
    import tensorflow as tf

    from highnoon.data.saved_tokenizer import load_saved_tokenizer

    directory = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
    return load_saved_tokenizer(directory or ".")


def load_for_generation(checkpoint: str | None, model_name: str, tokenizer_spec: str | None = None):
    """(model, tokenizer) from a checkpoint, or a fresh preset when `checkpoint` is None. The
    tokenizer is `tokenizer_spec` when given, else the checkpoint run's own, else bytes."""
    from highnoon.data.tokenizers import check_vocab_fits, load_tokenizer
    from highnoon.models import create_model, load_model
    from highnoon.models.contract import is_kerashub_causal_lm

    tokenizer = None
    if tokenizer_spec is None and checkpoint:
        tokenizer = run_tokenizer(checkpoint)
        if tokenizer is None:
            logging.warning("%s records no tokenizer: using 'byte'", checkpoint)
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_spec or "byte")
    if checkpoint:
        model = load_model(checkpoint)
        if is_kerashub_causal_lm(model):
            check_vocab_fits(tokenizer, model.backbone.vocabulary_size)
            return model, tokenizer
        check_vocab_fits(tokenizer, model.config.vocab_size)
    else:
        logging.warning("no --checkpoint: %s has untrained weights", model_name)
        model = create_model(model_name, tokenizer=tokenizer)
    model.tokenizer = tokenizer
    return model, tokenizer


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"generate: unexpected arguments {argv[1:]}")
    try:
        model, tokenizer = load_for_generation(FLAGS.checkpoint, FLAGS.model, FLAGS.tokenizer)
    except (ValueError, OSError) as error:
        if not FLAGS.checkpoint:
            raise SystemExit(f"generate: {error}") from None
        raise SystemExit(
            f"generate: cannot load --checkpoint={FLAGS.checkpoint}: {error}; {CHECKPOINT_HINT}"
        ) from None
    from highnoon.models.contract import is_kerashub_causal_lm

    options = {
        "max_length": FLAGS.max_length,
        "temperature": FLAGS.temperature,
        "top_k": FLAGS.top_k,
        "top_p": FLAGS.top_p,
        "seed": FLAGS.seed,
    }
    try:
        if is_kerashub_causal_lm(model):  # a KerasHub model's own generate, on our tokens
            from highnoon.models import kerashub

            text = kerashub.generate(model, FLAGS.prompt, tokenizer=tokenizer, **options)
        else:
            text = model.generate(FLAGS.prompt, **options)
    except ValueError as error:  # e.g. --max_length beyond the model's max_seq_length
        raise SystemExit(f"generate: {error}") from None
    print(text)


def run() -> None:
    """Console-script entry point (``highnoon-generate``)."""
    program.run(main)


if __name__ == "__main__":
    run()
