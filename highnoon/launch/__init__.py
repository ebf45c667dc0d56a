"""The launch programs, installed as console scripts (setup.py) and runnable with ``python -m``:

    highnoon-train          highnoon.launch.train          train through a gin-configured curriculum
    highnoon-generate       highnoon.launch.generate       sample from a trained model_dir
    highnoon-prepare-data   highnoon.launch.prepare_data   tokenise datasets into token stores
    (python -m)             highnoon.launch.local_cluster  N workers of one command on 127.0.0.1

``flags`` holds the flags and gin parsing they share, ``program`` what each does around
``absl.app.run`` (``--help`` listing the program's flags, log levels). In a checkout,
``python -m launch.train ...`` runs the same programs through the repository's ``launch/`` shims.

Importing this package defines no flags; each program module defines its own on import.
"""
