"""Orbax checkpoints of the training state plus a JSON side-car (privacy ledger, counters).

A checkpoint at step ``s`` holds the state *after* ``s`` steps. Restoring into a template
pytree gives arrays of identical dtype and value, so a resumed run continues bit-identically.
"""

import os
import pathlib
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(pytree, extra_json)`` pairs under ``<workdir>/checkpoints``.

  Args:
    workdir: run directory.
    max_to_keep: number of checkpoints kept.
  """

  def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    """The newest saved step, or ``None``."""
    return self._manager.latest_step()

  def save(self, step: int, pytree: Any, extra: dict[str, Any] | None = None) -> None:
    """Saves state (blocking, so an interruption right after loses nothing)."""
    self._manager.save(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(pytree), extra=ocp.args.JsonSave(extra or {})
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` shaped like ``template``."""
    out = self._manager.restore(
      int(step),
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), extra=ocp.args.JsonRestore()
      ),
    )
    return out["state"], dict(out["extra"] or {})

  def restore_extra(self, step: int) -> dict[str, Any]:
    """Restores only the JSON side-car of checkpoint ``step`` (no arrays, no template)."""
    out = self._manager.restore(int(step), args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    return dict(out["extra"] or {})

  def restore_params(self, step: int, params_template: Any) -> Any:
    """Restores only the ``params`` of checkpoint ``step`` (any gradient-mechanism state).

    Args:
      step: the checkpoint step.
      params_template: a pytree shaped like the parameters (dtypes and structure).

    Returns:
      The parameters with the template's structure and dtypes.
    """
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top

    out = self._manager.restore(
      int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    raw = out["state"]["params"]
    return jax.tree.map(
      lambda t, r: jax.numpy.asarray(np.asarray(r), t.dtype), params_template, raw
    )

  def restore_latest(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest checkpoint, or returns ``None`` when there is none."""
    step = self.latest_step()
    if step is None:
      return None
    state, extra = self.restore(step, template)
    return step, state, extra

  def close(self) -> None:
    """Releases the manager."""
    self._manager.close()


__all__ = ["Checkpointer"]
