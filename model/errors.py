"""The model package's errors: each message is one line that says what is wrong and where."""


class ModelError(Exception):
    """A model that cannot be loaded or run as asked."""


class ConfigError(ModelError, ValueError):
    """A config value this encoder cannot run exactly. The message names the field."""


class WeightsError(ModelError):
    """Missing, unexpected, misshaped or unreadable weights."""


class InputError(ModelError, ValueError):
    """Input the model cannot take (too long, out-of-vocabulary ids, empty)."""
