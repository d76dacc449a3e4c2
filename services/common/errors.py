"""The project's exception tree. Expected outcomes (not evacuable, no capacity) are
results with reasons, not exceptions; these are for things that went wrong.

EvacuateError
├── ConfigError        a setting is invalid (names the variable and what is valid)
├── BadMessage         a message off the bus cannot be used (goes to the dead-letter topic)
├── InfraError         the broker, the database or an embedded server is unusable
└── RebuildError       a rebuild step failed on the executor (carries the step name)
"""


class EvacuateError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(EvacuateError):
    pass


class BadMessage(EvacuateError):
    pass


class InfraError(EvacuateError):
    pass


class RebuildError(EvacuateError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
