"""Aegis: the QA control plane that ships as one file.

Aegis reads a YAML file naming QA services and workflows, runs the workflows with
retries, timeouts, parallel groups and conditions, and records every run.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
