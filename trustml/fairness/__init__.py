"""Fairness: prediction sensitivity (APS), counterfactuals, group and association metrics."""

from trustml.fairness import counterfactual

__all__ = ["counterfactual"]
