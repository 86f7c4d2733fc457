"""Exceptions raised by fastconv."""


class UnsupportedError(ValueError):
    """An algorithm was asked for a configuration it does not implement.

    Raised only when an algorithm is named explicitly; ``algorithm="auto"``
    always picks one that supports the call.
    """


class CudaUnavailableError(RuntimeError):
    """A CUDA array was passed but the CUDA target cannot be used here."""
