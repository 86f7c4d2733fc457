"""fastconv for PyTorch: ``import fastconv.torch``.

The public face of :mod:`fastconv.interop.torch` (importing it imports
torch and registers the ``fastconv::`` operators): :func:`conv2d`,
:func:`conv_transpose2d`, :class:`Conv2d` and :func:`convert`.
"""

from .interop.torch import Conv2d, conv2d, conv_transpose2d, convert

__all__ = ["conv2d", "conv_transpose2d", "Conv2d", "convert"]
