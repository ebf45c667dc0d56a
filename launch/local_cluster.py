"""`python -m launch.local_cluster` in a checkout runs `highnoon.launch.local_cluster`."""

import sys

from highnoon.launch.local_cluster import main

if __name__ == "__main__":
    sys.exit(main())
