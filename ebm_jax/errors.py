"""Errors a user can cause, each raised with one sentence naming the field and what is valid."""
import math


class ConfigError(ValueError):
    """A config field with a value the library cannot use."""


def check_positive(config, path: str, integer: bool = False, allow_zero: bool = False):
    """Raises ConfigError unless config.<path> is a positive (or non-negative) number."""
    node = config
    for part in path.split("."):
        node = node[part]
    ok = isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node)
    if ok and integer:
        ok = float(node).is_integer()
    if ok:
        ok = node >= 0 if allow_zero else node > 0
    if not ok:
        kind = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{path}={node!r} is invalid; it must be a finite {kind} {bound}.")
