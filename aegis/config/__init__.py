"""Configuration (DESIGN §2): find, load, validate and render the YAML file.

    find_config()     which file: --config, $AEGIS_CONFIG, or .aegis.yaml/aegis.yaml upwards
    load_config()     read + parse + interpolate ${VAR} + validate -> frozen Config
    parse_config()    the same for text held in memory
    config_to_dict()  Config -> JSON-able dict, secrets as "***"

Importing this package does not import ``yaml``; only loading a file does.
"""

from aegis.config.load import CONFIG_ENV, CONFIG_NAMES, find_config, load_config, parse_config
from aegis.config.model import (
    DEFAULT_HEALTH_ENDPOINT,
    DEFAULT_RETRY_DELAY,
    DEFAULT_STEP_TIMEOUT,
    AuthSpec,
    Config,
    HistorySpec,
    Identity,
    ServerSpec,
    ServiceSpec,
    StepSpec,
    WebhookSpec,
    WorkflowSpec,
    frozen_mapping,
)
from aegis.config.render import REDACTED, config_to_dict
from aegis.errors import ConfigError, ConfigProblem

__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAMES",
    "DEFAULT_HEALTH_ENDPOINT",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_STEP_TIMEOUT",
    "REDACTED",
    "AuthSpec",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HistorySpec",
    "Identity",
    "ServerSpec",
    "ServiceSpec",
    "StepSpec",
    "WebhookSpec",
    "WorkflowSpec",
    "config_to_dict",
    "find_config",
    "frozen_mapping",
    "load_config",
    "parse_config",
]
