"""Lab-in-a-box: a topology file built on one machine with OVS and namespaces."""

from tools.lab.lab import Lab, LabError
from tools.lab.plan import Plan, PlanError, make_plan

__all__ = ["Lab", "LabError", "Plan", "PlanError", "make_plan"]
