"""`duda-export-onnx` in a clone of the repository: the code and its help live in `duda_hf/cli/export_onnx.py`."""

import sys

from duda_hf.cli.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
