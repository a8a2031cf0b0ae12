"""`duda-train` in a clone of the repository: the code and its help live in `duda_hf/cli/train_duda.py`."""

import sys

from duda_hf.cli.train_duda import main

if __name__ == "__main__":
    sys.exit(main())
