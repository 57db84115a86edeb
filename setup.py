"""pyproject.toml holds the metadata. This only lists the packages, which its static tables cannot: every
package under src/ plus the top-level conf/ (its config groups included) as `exfacegan.conf`, mapped in
[tool.setuptools.package-dir]."""

from setuptools import find_namespace_packages, find_packages, setup

CONFIG_GROUPS = find_namespace_packages("conf", exclude=["*__pycache__*"])
setup(packages=[*find_packages("src"), "exfacegan.conf", *(f"exfacegan.conf.{group}" for group in CONFIG_GROUPS)])
