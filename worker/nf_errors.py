"""The one error type for bad NF runtime and NF configuration."""


class NFConfigError(ValueError):
    """A config value is wrong: ``field`` is its dotted path, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
