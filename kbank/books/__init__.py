"""Closing the books (issue 45): every account at an instant, exact across partitions.

    cut      which ledger events belong to a close, and the close they make (pure)
    close    the Kafka part: wait until the instant is settled, read the ledger, store the
             close in books.closes, read closes back
    trial    a close's trial balance, per currency and per account metadata key (pure)
"""
