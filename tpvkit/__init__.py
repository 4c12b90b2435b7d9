"""tpvkit: train, evaluate and inspect camera-only 3D semantic occupancy models (TPVFormer)."""

__version__ = "0.2.0"
