"""fastconv for Dask: ``import fastconv.dask as fd; fd.conv2d(x, w)``.

A thin public name for :mod:`fastconv.interop.dask`; Dask itself is imported
only when :func:`conv2d` is first called.
"""

from .interop.dask import conv2d

__all__ = ["conv2d"]
