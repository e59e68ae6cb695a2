"""Package layout: the repository's top level is the DAG (flows/ tasks/ models/ infra/), imported as
``srcompress.flows`` … through ``package_dir``. The package list is derived from the folders, never kept by hand.
Everything else (metadata, dependencies) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

LAYERS = ("flows", "tasks", "models", "infra")

package_dir = {"srcompress": "srcompress", "srcompress.configs": "configs"}
packages = ["srcompress", "srcompress.configs"]
for layer in LAYERS:
    package_dir[f"srcompress.{layer}"] = layer
    packages += [f"srcompress.{layer}"] + [f"srcompress.{layer}.{sub}" for sub in find_packages(layer)]

setup(packages=packages, package_dir=package_dir, package_data={"srcompress.configs": ["*.yaml"]},
      include_package_data=False)
