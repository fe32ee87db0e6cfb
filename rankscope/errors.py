"""Exception types whose message is shown to users as a one-line error by the CLI."""


class RankscopeError(Exception):
    """Base class: a problem with the user's input that the message explains how to fix."""


class DataError(RankscopeError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(RankscopeError):
    """A checkpoint is corrupt, foreign, unsafe to load or incompatible."""


class GenotypeError(RankscopeError, ValueError):
    """A genotype is malformed (unknown op, bad input index, wrong number of edges)."""


class ConfigError(RankscopeError, ValueError):
    """A configuration value, preset or option is invalid."""
