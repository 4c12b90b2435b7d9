"""Ops: multi-scale deformable attention backends and modulated deformable convolution."""

from tpvkit.ops.msda import available_backends, multi_scale_deformable_attn, resolve_backend

__all__ = ["available_backends", "multi_scale_deformable_attn", "resolve_backend"]
