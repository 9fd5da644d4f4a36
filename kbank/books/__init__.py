"""Closing the books and reconciling them (issue 45): the tools' side.

    cut          which ledger events belong to a close, folded through verify's checks
    close        `bank close --at`: wait until the instant is settled, fold, store
    statements   statement files (CSV, MT940, camt.053) into validated lines
    matching     the reconciliation of an account's lines and events, by rules (pure)
    reconcile    imports, rules, and the reconciler worker (`bank reconciler`)

The close's model, its store and what the views serve of it are kbank.streams.books.
"""
