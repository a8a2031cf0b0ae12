"""The architectures duda-hf adds to transformers' Auto classes, registered when `duda_hf` is imported, without making
that import slow: `import duda_hf` imports neither torch nor transformers (the light scripts rely on it).

If transformers is already loaded, registration happens at once; otherwise right after the `transformers` package
module is first executed (registering from inside one of its submodules' imports would meet them half loaded).
Registering imports `duda_hf.networks.daformer` (and so torch and transformers' SegFormer), whose own import ends by
registering. A failure to register is a warning: `import transformers` itself never fails because of duda_hf.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

DAFORMER = "duda_hf.networks.daformer"


def _register() -> None:
    daformer = sys.modules.get(DAFORMER)
    if daformer is not None and getattr(getattr(daformer, "__spec__", None), "_initializing", False):
        return  # being imported (it imported transformers): it registers when it has loaded
    try:
        importlib.import_module(DAFORMER).register()
    except Exception as error:  # a broken install must not break transformers for its user
        warnings.warn(f"duda_hf could not register the DAFormer architecture with transformers: {error!r}", stacklevel=2)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself. When `transformers` is being imported, it asks the other finders for the real spec and
    wraps that loader's `exec_module` (for this one import, then restored) so that registration runs once the package
    module has executed; it leaves `sys.meta_path` only then, so a mere `importlib.util.find_spec('transformers')`
    (an availability check) does not disarm it."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, finder = spec.loader, self
        execute = loader.exec_module

        def exec_module(module):
            try:
                execute(module)
            finally:
                if loader.__dict__.get("exec_module") is exec_module:
                    del loader.exec_module
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            _register()

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers is loaded, else when it loads."""
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())
