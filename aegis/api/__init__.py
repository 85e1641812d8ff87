"""The JSON API and the landing page behind ``aegis serve``.

``http.server`` handler threads never run asyncio themselves: they hand coroutines to the
one ``LoopThread`` (``loop.py``), on which the ``RunManager`` (``manager.py``) queues and
runs workflows and the ``HealthCache`` (``health.py``) checks services.
"""
