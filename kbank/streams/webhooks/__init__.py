"""Webhooks: registrations (rules), the delivery worker (worker)."""
