"""Command-line entry points, installed as console commands and kept as `scripts/*.py` in the repository.

| console command       | module                            | script in a clone           |
|-----------------------|-----------------------------------|-----------------------------|
| `duda-train`          | `duda_hf.cli.train_duda`          | `scripts/train_duda.py`     |
| `duda-evaluate`       | `duda_hf.cli.evaluate_duda`       | `scripts/evaluate_duda.py`  |
| `duda-prepare-data`   | `duda_hf.cli.prepare_data`        | `scripts/prepare_data.py`   |
| `duda-push`           | `duda_hf.cli.push_to_hub`         | `scripts/push_to_hub.py`    |
| `duda-make-synthetic` | `duda_hf.cli.make_synthetic`      | `scripts/make_synthetic.py` |
| `duda-pretrain-synthetic` | `duda_hf.cli.pretrain_synthetic` | `scripts/pretrain_synthetic.py` |
| `duda-export-onnx`    | `duda_hf.cli.export_onnx`         | `scripts/export_onnx.py`    |
| `duda-import-checkpoint` | `duda_hf.cli.import_checkpoint` | `scripts/import_checkpoint.py` |

Each module's `main(argv=None)` returns the exit status, and each runs as a module, so that
`accelerate launch -m duda_hf.cli.train_duda --config RECIPE.yaml` works from an installed wheel.
"""
