"""``python -m mtlser.launch``: the job array of :mod:`mtlser.launch.jobs` (its doc: the options)."""

import sys

from mtlser.launch.jobs import main
from mtlser.utils import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
