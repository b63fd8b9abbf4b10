"""Exceptions raised by vtprune. Every message says what was expected, what was given, and what to do."""

from __future__ import annotations


class VtpruneError(Exception):
    """Base class of every error vtprune raises on purpose."""


class ContractError(VtpruneError, ValueError):
    """An input or a stage output broke the stage contract (shape, dtype, range, budget)."""


class UnknownNameError(VtpruneError, LookupError):
    """A strategy, stage or parameter name is not registered."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginError(VtpruneError, RuntimeError):
    """A plugin could not be loaded, or two plugins registered the same name."""


class MissingSignalError(VtpruneError, ValueError):
    """A strategy needs a signal (image, attention, ...) that the caller or adapter did not supply."""
