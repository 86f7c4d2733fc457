"""Thin adapters from fastconv to array frameworks, one module each.

``fastconv.interop.torch`` (public as :mod:`fastconv.torch`) and
``fastconv.interop.jax`` (public as :mod:`fastconv.jax`) import their
framework only when used: importing this package imports neither.
"""
