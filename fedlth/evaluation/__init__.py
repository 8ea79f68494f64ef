"""Judging tickets: pluggable evaluators, robustness, fairness, reference scores, re-evaluation."""
