"""The reference's "Complete Training Example", unchanged except for the preset and dataset names.

The reference trains highnoon-3b on pile_subset, the_stack_v2 and open_assistant. Here the preset
is highnoon-tiny (it trains on a laptop CPU) and the datasets are the embedded ones every machine
has; register your own data under the reference's names to run it as written:

    highnoon.data.register_dataset("the_stack_v2", "/data/the_stack_v2/*.jsonl", text_field="content")

Run: python examples/complete_training.py
"""

import highnoon as hn


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


if __name__ == "__main__":
    main()
