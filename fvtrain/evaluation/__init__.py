"""Metrics, relation and analogy evaluation, alignment, decoding, figures and reports."""
