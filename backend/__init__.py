"""FinOps Automation: find cloud waste and remove it, safely."""
