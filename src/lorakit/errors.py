"""The base of every "fix your input" error.

`InputError` (a ValueError) means something the user gave is wrong: a config key, a data row, a
model name, an adapter directory, a list of target modules. Its message names what and where in
one line. The CLI prints these in one line and exits with code 2; any other exception is a bug in
lorakit and keeps its traceback.
"""


class InputError(ValueError):
    """Something the user gave is wrong; the message says what and where, in one line."""


class UnsupportedOperation(InputError, NotImplementedError):
    """An operation that has no meaning for what the user chose (e.g. merging a prompt adapter): a user
    error (one line, exit 2 from the CLI) that is also a NotImplementedError."""


class UnknownAdapterError(InputError, KeyError):
    """No adapter of that name on the model (also a KeyError, as a dict lookup would raise)."""

    __str__ = ValueError.__str__
