"""Packaging glue that pyproject.toml cannot express: the top-level configs/ folder (the source of
truth for the shipped YAML files) is installed as the package data folder tpvkit/configs/; the
viewer page template and its vendored three.js are package data of tpvkit.outputs.viewer."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tpvkit", "tpvkit.*"]), "tpvkit.configs"],
    package_dir={"tpvkit.configs": "configs"},
    package_data={
        "tpvkit.configs": ["*.yaml"],
        "tpvkit.outputs.viewer": ["*.html", "*.js", "vendor/*"],
    },
)
