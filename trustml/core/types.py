"""Type aliases shared across trustml.

A *batch* is a dict of arrays with a leading batch axis ``B``:

* ``tokens``: int32 ``[B, T]`` token ids (0 is padding).
* ``mask``: bool/float ``[B, T]`` token validity.
* ``label``: int32 ``[B]`` class label (classifiers only).
* ``weight``: float32 ``[B]``; 0.0 marks a padding example that must contribute nothing.
* optional ``group`` int32 ``[B]`` (protected attribute, -1 unknown) and ``user_id`` int32 ``[B]``.
"""

from collections.abc import Mapping
from typing import Any

import jax

Params = Any  # A pytree of arrays.
Batch = Mapping[str, jax.Array]
PRNGKey = jax.Array  # A typed key from ``jax.random.key``.

__all__ = ["Batch", "PRNGKey", "Params"]
