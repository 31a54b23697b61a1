"""Differential privacy for distillation: Opacus accounting and privacy audits.

The private methods themselves (``dp-dm``, ``dp-dc``) live in :mod:`distill_apps.methods.private`; the DP-SGD
baseline in :mod:`distill_apps.integrations.opacus`. Needs the ``privacy`` extra (``pip install
'distill-apps[privacy]'``) for Opacus.
"""
from .accounting import (ACCOUNTANTS, BudgetExceededError, PrivacyBudget, calibrate_noise, check_accountant,
                         check_target, epsilon_for, make_accountant)
from .audit import (MIAResult, audit_summary, membership_inference, nearest, nearest_neighbour_audit,
                    side_by_side_png, tpr_at_fpr)

__all__ = ["ACCOUNTANTS", "BudgetExceededError", "PrivacyBudget", "calibrate_noise", "check_accountant",
           "check_target", "epsilon_for", "make_accountant", "MIAResult", "audit_summary", "membership_inference",
           "nearest", "nearest_neighbour_audit", "side_by_side_png", "tpr_at_fpr"]
