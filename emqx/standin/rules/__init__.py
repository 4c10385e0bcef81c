"""EMQX rule engine subset: rule SQL, the pgsql and http actions, buffering and retry."""
from .actions.base import RuleDeliveryError
from .engine import RuleEngine

__all__ = ["RuleDeliveryError", "RuleEngine"]
