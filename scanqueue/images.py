"""Image references: parse, normalise, compare. Pure: no I/O.

(Being written for issue 4: ``parse(text) -> Reference``.)
"""
