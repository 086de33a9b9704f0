"""The model package's errors: each message is one line that says what is wrong and where."""


class ModelError(Exception):
    """A model that cannot be loaded or run as asked."""


class ConfigError(ModelError, ValueError):
    """A config value this encoder cannot run exactly. The message names the field."""


class WeightsError(ModelError):
    """Missing, unexpected, misshaped or unreadable weights."""


class InputError(ModelError, ValueError):
    """Input the model cannot take (too long, out-of-vocabulary ids, empty)."""


class PairTooLong(InputError):
    """A (query, document) pair over the model's input limit, not truncated. `index` is the document's."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(
            f"document {index} with the query is {tokens} tokens, over this model's maximum of {limit} "
            "(shorten it, or let the pair be truncated)"
        )
        self.index, self.tokens, self.limit = index, tokens, limit
