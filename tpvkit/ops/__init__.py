"""Ops: multi-scale deformable attention backends and modulated deformable convolution."""
