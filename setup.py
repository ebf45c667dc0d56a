"""Packaging for highnoon.

TensorFlow is chosen through an extra so each kind of host installs the right build:

    pip install -e '.[cpu]'   # laptop / CI: tensorflow-cpu
    pip install -e '.[gpu]'   # CUDA host: tensorflow with its CUDA wheels
    pip install -e '.[tpu]'   # TPU VM: tensorflow-tpu and cloud-tpu-client
    pip install -e '.[cpu,test]'  # plus the test tools
    pip install -e '.[cpu,plot]'  # plus matplotlib, for highnoon-curriculum-report's plots
    pip install -e '.[cpu,hf]'    # plus `tokenizers`, to read or train Hugging Face tokenizer.json
    pip install -e '.[cpu,beam]'  # plus Apache Beam, for highnoon-prepare-data --runner=...
    pip install -e '.[cpu,kerashub]'  # plus keras-hub, to train KerasHub causal LMs
    pip install -e '.[cpu,eval]'  # plus lm-evaluation-harness (highnoon-lm-eval --model highnoon)

Everything installs under the `highnoon` namespace: the launch programs are
`highnoon.launch.*` (console scripts below) and the repository's `gin/` directory ships as the
data package `highnoon.gin`, so `highnoon-train --gin_file=runs/quickstart.gin` finds it from an
installed wheel. The repository's `launch/` (cluster scripts and `python -m launch.*` shims) is
not installed.
"""

from pathlib import Path

from setuptools import find_packages, setup

TF_VERSION = "2.21.0"
PLOT = ["matplotlib>=3.8"]
# An extra, not a requirement: the `tokenizers` wheel is small, but it pulls huggingface_hub and
# its HTTP stack, which byte and SentencePiece users never need. Tested with 0.23; the
# tokenizer.json format and the BPE trainer's tie-break are stable across 0.20-0.23, and a minor
# release may change them, hence the upper bound (a store records its file's sha256 anyway).
HF = ["tokenizers>=0.20,<0.24"]
# Data preparation at scale (highnoon-prepare-data --runner=...): Apache Beam, the engine TFDS
# itself uses for large datasets. Beam caps protobuf below 7, which TensorFlow 2.21 accepts.
BEAM = ["apache-beam>=2.60,<3"]
# KerasHub causal LMs (GPT-2, Llama, Gemma ...) trained by the Trainer. keras-hub pulls
# tensorflow-text, which requires the full `tensorflow` wheel beside tensorflow-cpu.
KERASHUB = ["keras-hub>=0.32,<0.33"]
# lm-evaluation-harness: the `highnoon` lm_eval model and in-loop evaluation. 0.4.13 needs no
# torch; its model API (LM, Instance, register_model) is stable across 0.4.x.
EVAL = ["lm-eval>=0.4.13,<0.5"]

setup(
    name="highnoon",
    version="0.1.0",
    description="Curriculum training of language models on TensorFlow, from a laptop to TPU pods.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["highnoon", "highnoon.*"]), "highnoon.gin"],
    package_dir={"highnoon.gin": "gin"},
    package_data={
        "highnoon": ["py.typed"],
        "highnoon.data": ["beam_site/sitecustomize.py"],  # beam_prepare.lean_local_workers
        "highnoon.gin": ["*.gin", "*/*.gin"],
    },
    include_package_data=True,
    install_requires=[
        "numpy>=1.26",
        "absl-py>=2.1",
        "gin-config>=0.5",
        "tensorflow-datasets>=4.9",
        "sentencepiece>=0.2",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        # CRC32C of every store block, checked on first read (the checksum GCS uses).
        "google-crc32c>=1.5",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "tpu": [f"tensorflow-tpu=={TF_VERSION}", "cloud-tpu-client>=0.10"],
        # Plots (highnoon-curriculum-report, bench/curriculum_value.py); training never needs it.
        "plot": PLOT,
        # Hugging Face tokenizer.json files (highnoon.data.TokenizerJson, train_tokenizer_json).
        "hf": HF,
        "beam": BEAM,
        "kerashub": KERASHUB,
        "eval": EVAL,
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            *PLOT,
            *HF,
            *BEAM,
            *KERASHUB,
            *EVAL,
        ],  # fmt: skip
    },
    entry_points={
        "console_scripts": [
            "highnoon-train=highnoon.launch.train:run",
            "highnoon-prepare-data=highnoon.launch.prepare_data:run",
            "highnoon-generate=highnoon.launch.generate:run",
            "highnoon-curriculum-report=highnoon.launch.curriculum_report:run",
            "highnoon-lm-eval=highnoon.launch.evaluate:run",
            "highnoon-average-checkpoints=highnoon.launch.average_checkpoints:run",
        ]
    },
)
