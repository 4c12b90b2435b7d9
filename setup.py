"""Packaging glue that pyproject.toml cannot express: the top-level configs/ folder (the source of
truth for the shipped YAML files) is installed as the package data folder tpvkit/configs/; the
viewer page template is package data of tpvkit.outputs.viewer, and its vendored three.js folder
is listed as a package of its own (tpvkit.outputs.viewer.vendor: Python can import any folder, and
setuptools warns about a folder it would ship as data without it being a listed package)."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["tpvkit", "tpvkit.*"]),
        "tpvkit.configs",
        "tpvkit.outputs.viewer.vendor",
    ],
    package_dir={"tpvkit.configs": "configs"},
    package_data={
        "tpvkit.configs": ["*.yaml"],
        "tpvkit.outputs.viewer": ["*.html", "*.js"],
        "tpvkit.outputs.viewer.vendor": ["*.js", "*.LICENSE", "README.md"],
    },
)
