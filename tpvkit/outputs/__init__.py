"""Outputs: metrics, predictions, PLY export and rendered pictures."""
