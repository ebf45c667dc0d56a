"""Repository-only shims: ``python -m launch.<program>`` runs ``highnoon.launch.<program>``.

The launch programs live in the package (``highnoon/launch/``) and are installed as console
scripts (``highnoon-train``, ``highnoon-generate``, ``highnoon-prepare-data``); this directory
is not installed. It keeps the cluster scripts (``tpu_pod.sh``, ``slurm.sbatch``) and the short
``python -m launch.train ...`` spelling that the README, the Makefile and the tests use in a
checkout.
"""
