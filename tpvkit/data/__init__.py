"""Data: nuScenes and synthetic dataroots, info files and the torch Dataset."""
