"""Quadrant's controller and ingress, an os-ken application.

Start it with ``osken-manager quadrant_app --config-file quadrant.conf``.
os-ken's loader only takes application classes whose ``__module__`` is the
module it was asked to load, so the class defined in :mod:`quadrant_app.app`
is re-homed here.  The pure modules (``topology``, ``core``, ...) import
os-ken's message classes at most, never its app machinery.
"""


def __getattr__(name):
    # Imported lazily so `import quadrant_app.topology` (the lab, tests) does
    # not pull in os-ken's application manager.
    if name == "QuadrantApp":
        from quadrant_app.app import QuadrantApp

        QuadrantApp.__module__ = __name__
        return QuadrantApp
    raise AttributeError(name)


def __dir__():
    return sorted({*globals(), "QuadrantApp"})
