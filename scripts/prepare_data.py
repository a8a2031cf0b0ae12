"""`duda-prepare-data` in a clone of the repository: the code and its help live in `duda_hf/cli/prepare_data.py`."""

import sys

from duda_hf.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
