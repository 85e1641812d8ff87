"""What `aegis run` leaves for a CI system: a JUnit file and GitHub Actions output.

``outcomes`` reads the failing tests out of a run record once; ``junit`` and ``github``
render them. Nothing here touches the network or the engine: each takes a finished
``Run`` and writes text.
"""
