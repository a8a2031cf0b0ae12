"""`duda-import-checkpoint` in a clone of the repository: the code and its help live in `duda_hf/cli/import_checkpoint.py`."""

import sys

from duda_hf.cli.import_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
