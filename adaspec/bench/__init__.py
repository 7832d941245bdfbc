"""Spec-Bench style benchmarking: methods measured side by side on the same questions."""
