"""stub"""
from __future__ import annotations
from . import POLICIES, PolicyBase
class AutoPolicy(PolicyBase):
    pass
