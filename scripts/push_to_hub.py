"""`duda-push` in a clone of the repository: the code and its help live in `duda_hf/cli/push_to_hub.py`."""

import sys

from duda_hf.cli.push_to_hub import main

if __name__ == "__main__":
    sys.exit(main())
