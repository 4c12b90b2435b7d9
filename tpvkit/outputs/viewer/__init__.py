"""Package data of `tpvkit view`: the page template, its script and the vendored three.js
(read with importlib.resources by tpvkit.outputs.view)."""
