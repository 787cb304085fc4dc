"""Errors the kit raises on bad input. Each message names the file, field or parameter at fault."""


class DelrecError(Exception):
    """Base class: every error the kit raises on purpose."""


class ConfigError(DelrecError, ValueError):
    """A parameter, preset or config file is wrong."""


class DataError(DelrecError, ValueError):
    """An input file is missing, truncated, malformed or fails its checksum."""


class StaleArtifactError(DelrecError, RuntimeError):
    """An artifact was produced from other inputs than the ones at hand (another run, data or model)."""
