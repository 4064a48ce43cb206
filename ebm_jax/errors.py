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


def optional_weight(config, path: str, default: float) -> float:
    """config.<path> as a float, checked finite and >= 0 where present; `default` where the config
    has no such field (configs saved before it existed restore with the old behaviour)."""
    section, _, name = path.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
        node = node[part]
    if name not in node:
        return float(default)
    check_positive(config, path, allow_zero=True)
    return float(node[name])
