"""The workflow engine: runs a workflow's steps in batches with conditions and retries.

The engine knows nothing of HTTP serving, argparse or printing; the CLI and the API are
thin adapters over ``aegis.engine.runner.Engine``.
"""
