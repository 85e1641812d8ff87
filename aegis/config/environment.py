"""What a config expects of the environment, checked before a run: warnings, not errors.

A service's ``api_key_env`` names the variable holding its key. When that variable is
unset or empty, no ``X-API-Key`` is sent and the service answers 401 at run time;
``config validate`` and ``aegis run`` say so up front.
"""

from __future__ import annotations

from collections.abc import Mapping

from aegis.config.model import Config

__all__ = ["unset_key_warnings"]


def unset_key_warnings(
    config: Config, environ: Mapping[str, str], workflow: str | None = None
) -> list[str]:
    """One warning per service whose ``api_key_env`` variable is unset or empty: every
    service, or those the steps of ``workflow`` use."""
    keys = list(config.services)
    if workflow is not None and workflow in config.workflows:
        used = {step.service for step in config.workflows[workflow].steps}
        keys = [key for key in keys if key in used]
    warnings = []
    for key in keys:
        variable = config.services[key].api_key_env
        if variable and not environ.get(variable):
            where = f"{config.source}: " if config.source else ""
            warnings.append(
                f"{where}services.{key}.api_key_env: {variable} is not set, so requests to "
                f"{key} carry no X-API-Key"
            )
    return warnings
