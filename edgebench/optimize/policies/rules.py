"""stub"""
from __future__ import annotations
from . import POLICIES, PolicyBase
class RulesPolicy(PolicyBase):
    pass
