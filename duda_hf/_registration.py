"""The architectures duda-hf adds to transformers' Auto classes, registered when `duda_hf` is imported, without making
that import slow: `import duda_hf` imports neither torch nor transformers (the light scripts rely on it).

If transformers is already loaded, registration happens at once; otherwise right after `transformers` itself is first
imported (its package module only: registering from inside one of its submodules' imports would meet them half
loaded). Registering imports `duda_hf.networks.daformer`, whose own import ends by registering.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

DAFORMER = "duda_hf.networks.daformer"


def _register() -> None:
    daformer = sys.modules.get(DAFORMER)
    if daformer is not None and getattr(getattr(daformer, "__spec__", None), "_initializing", False):
        return  # being imported (it imported transformers): it registers when it has loaded
    importlib.import_module(DAFORMER).register()


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for `transformers`, it wraps the real loader so that registration runs once the package
    module has executed, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers is loaded, else when it loads."""
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())
