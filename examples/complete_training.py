"""The Trainer API's "Complete Training Example", unchanged except for the preset and dataset
names.

As documented, it trains highnoon-3b on pile_subset, the_stack_v2 and open_assistant. Here the
preset is highnoon-tiny (it trains on a laptop CPU) and the datasets are the embedded ones every
machine has; register your own data under the documented names to run it as written:

    highnoon.data.register_dataset("the_stack_v2", "/data/the_stack_v2/*.jsonl", text_field="content")

Run: python examples/complete_training.py

Run as a script, it works in its own directory, $HIGHNOON_EXAMPLE_DIR (default:
<tmp>/highnoon_examples/complete_training), so the example's relative
checkpoint_dir="./checkpoints" lands there rather than in the checkout, and running it again
resumes from those checkpoints. Calling main() uses the current working directory, as the
documented example does.
"""

import os
import tempfile

import highnoon as hn

WORKDIR_ENV = "HIGHNOON_EXAMPLE_DIR"


def main() -> dict:
    # Create model
    model = hn.create_model("highnoon-tiny")

    # Create trainer with custom settings
    trainer = hn.Trainer(
        model,
        learning_rate=1e-4,
        batch_size=8,
        gradient_accumulation_steps=4,  # Effective batch = 32
    )

    # Define curriculum
    trainer.add_curriculum_stage(
        "foundation",
        datasets=["stdlib_docs"],
        epochs=5,
    )

    trainer.add_curriculum_stage(
        "code",
        datasets=["stdlib_code"],
        epochs=3,
    )

    trainer.add_curriculum_stage(
        "instruction",
        datasets=["stdlib_instructions"],
        epochs=2,
        weight=2.0,  # Higher priority
    )

    # Add monitoring callback
    def monitor(event):
        if event["event"] == "epoch_end":
            print(f"[{event['stage']}] Epoch {event['epoch']}: loss={event['loss']:.4f}")

    trainer.add_callback(monitor)

    # Train
    summary = trainer.train(
        checkpoint_dir="./checkpoints",
        checkpoint_interval=500,
    )

    print(f"Training complete! Total steps: {summary['total_steps']}")
    return summary


def workdir() -> str:
    """The example's own working directory (see the module docstring)."""
    default = os.path.join(tempfile.gettempdir(), "highnoon_examples", "complete_training")
    return os.environ.get(WORKDIR_ENV) or default


if __name__ == "__main__":
    directory = workdir()
    os.makedirs(directory, exist_ok=True)
    os.chdir(directory)
    print(f"working directory: {directory} (checkpoints in ./checkpoints)")
    main()
