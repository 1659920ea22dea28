"""binrec: graph recommenders compressed to binary and 2-bit codes, served by exact Hamming search.

One namespace so that the three parts cannot collide with a user's own ``trainer``, ``index`` or ``service``:
``binrec.index`` is the ground floor (bundle contract, code layouts, search backends), ``binrec.trainer`` and
``binrec.service`` build on it and never on each other.
"""
