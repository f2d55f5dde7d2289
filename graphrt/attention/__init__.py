"""Attention: one key-set rule (plan.py) and the backends that compute it."""

from .plan import AttentionPlan, PlanBuilder, dense_mask

__all__ = ["AttentionPlan", "PlanBuilder", "dense_mask"]
