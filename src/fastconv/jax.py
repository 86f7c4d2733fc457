"""fastconv for JAX: ``import fastconv.jax as fj; fj.conv2d(x, w)``.

A thin public name for :mod:`fastconv.interop.jax`; JAX itself is imported
only when :func:`conv2d` is first called.
"""

from .interop.jax import conv2d

__all__ = ["conv2d"]
