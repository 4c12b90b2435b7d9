"""Model tests (a package, so that basenames such as test_geometry.py may repeat across
test folders)."""
