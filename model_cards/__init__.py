"""The model card templates, shipped as the subpackage `duda_hf.model_cards`.

The folder sits at the top of the repository (`model_cards/`, beside `duda_hf/`); pyproject.toml's `package-dir` maps
it into the package, so the editable install and an installed wheel both read the templates from here
(`duda_hf.export.model_card.TEMPLATE`). Its `examples/` and README.md stay in the repository.
"""
