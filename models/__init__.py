"""Pure PyTorch / diffusers code: no Prefect, MLflow, boto3 or Ray imports below this folder."""

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package ``__getattr__`` that imports ``<package>.<module>`` when one of its names is first used: a
    config that needs one pydantic model of a package does not pay for the package's torch and diffusers."""
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
