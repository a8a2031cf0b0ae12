"""`duda-pretrain-synthetic` in a clone of the repository: the code and its help live in `duda_hf/cli/pretrain_synthetic.py`."""

import sys

from duda_hf.cli.pretrain_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
