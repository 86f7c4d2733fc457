"""LeNet-5's C3 connection table, as a ``connections=`` argument for :func:`fastconv.conv2d`.

In LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning
applied to document recognition", Proc. IEEE 86(11), Section II.B and
Table 1) layer C3 turns the 6 feature maps of S2 (14 x 14 each) into 16
feature maps (10 x 10 each) with 5 x 5 kernels, but not every C3 map reads
every S2 map.  Table 1 of the paper says which ones do: the first six C3
maps read three contiguous S2 maps, the next six read four contiguous maps,
the next three read four non-contiguous maps and the last one reads all six.
The paper gives two reasons: it keeps the number of connections "within
reasonable bounds", and it breaks the symmetry of the network, so different
C3 maps are forced to extract different features.

``fastconv.conv2d(x, w, connections=table)`` applies such a table: the
weights ``w[k, c]`` of a pair ``(k, c)`` with ``table[k, c] == False`` are
treated as zero.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lenet5_c3_table", "lenet5_c3_parameter_count", "LENET5_C3_INPUTS"]

#: For each C3 output map ``k`` (0..15), the S2 input maps it reads, in the
#: order of the columns of Table 1 of LeCun et al. (1998).
LENET5_C3_INPUTS = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def lenet5_c3_table() -> np.ndarray:
    """The S2 -> C3 connection table of LeNet-5, as a bool array of shape (16, 6).

    ``table[k, c]`` is True when C3 output map ``k`` reads S2 input map
    ``c``.  It is the ``connections=`` argument of :func:`fastconv.conv2d`
    for the C3 layer (``w`` of shape ``(16, 6, 5, 5)``).

    Returns
    -------
    table : numpy.ndarray of bool, shape (16, 6)
        A new array on every call (modifying it changes nothing here).

    Notes
    -----
    Table 1 of LeCun et al. (1998) is printed with one **row per S2 input
    map** (0..5) and one **column per C3 output map** (0..15), an X marking
    each connection.  This function returns its transpose, one row per
    output map, because :func:`fastconv.conv2d` orders everything output
    first, like its weights ``w[k, c, r, s]``: ``table[k]`` is the list of
    inputs of output map ``k``, and ``table.T`` is the paper's picture.

    The table has 60 True entries (6 x 3 + 6 x 4 + 3 x 4 + 1 x 6); with one
    5 x 5 kernel slice per connection and one bias per output map that is
    the paper's 1,516 trainable parameters
    (:func:`lenet5_c3_parameter_count`).

    References
    ----------
    Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning
    applied to document recognition", Proceedings of the IEEE 86(11),
    2278-2324, 1998; Section II.B and Table 1.

    Examples
    --------
    >>> from fastconv.lenet import lenet5_c3_table
    >>> table = lenet5_c3_table()
    >>> table.shape, int(table.sum())
    ((16, 6), 60)
    >>> [c for c in range(6) if table[0, c]]        # C3 map 0 reads S2 maps 0, 1, 2
    [0, 1, 2]
    >>> print("\\n".join("".join("X" if v else "." for v in row) for row in table.T))
    X...XXX..XXXX.XX
    XX...XXX..XXXX.X
    XXX...XXX..X.XXX
    .XXX..XXXX..X.XX
    ..XXX..XXXX.XX.X
    ...XXX..XXXX.XXX
    """
    table = np.zeros((16, 6), dtype=bool)
    for k, inputs in enumerate(LENET5_C3_INPUTS):
        table[k, list(inputs)] = True
    return table


def lenet5_c3_parameter_count(table=None, kernel_size=(5, 5), bias=True) -> int:
    """Trainable parameters of a convolution layer restricted by a connection table.

    ``count = table.sum() * R * S + (K if bias else 0)``: one ``R x S``
    kernel slice per connected (output map, input map) pair plus one bias per
    output map.  With LeNet-5's C3 table this is the paper's figure,
    ``60 * 25 + 16 = 1516``.

    Parameters
    ----------
    table : array_like of bool, shape (K, C), optional
        The connection table (default :func:`lenet5_c3_table`).
    kernel_size : (int, int)
        ``(R, S)``; LeNet-5 uses 5 x 5.
    bias : bool
        Whether each output map has a trainable bias.

    Returns
    -------
    int

    Examples
    --------
    >>> from fastconv.lenet import lenet5_c3_parameter_count
    >>> lenet5_c3_parameter_count()
    1516
    >>> import numpy as np                 # a fully connected C3 for comparison
    >>> lenet5_c3_parameter_count(np.ones((16, 6), bool))
    2416
    """
    table = lenet5_c3_table() if table is None else np.asarray(table)
    if table.dtype != np.bool_:
        raise TypeError(f"table must be a bool array, got dtype {table.dtype}")
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (K, C), got shape {table.shape}")
    try:
        R, S = (int(v) for v in kernel_size)
    except (TypeError, ValueError):
        raise TypeError(f"kernel_size must be a pair of ints (R, S), got {kernel_size!r}") from None
    if R < 1 or S < 1:
        raise ValueError(f"kernel_size must be >= 1 in each dimension, got {kernel_size!r}")
    return int(table.sum()) * R * S + (table.shape[0] if bias else 0)
