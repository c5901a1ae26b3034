"""Orbax checkpoints: periodic, asynchronous, the last N kept, atomic, with fallback.

Layout: `WORKDIR/checkpoints/<step>/{state, data, meta}`:
- `state`: the train state pytree {"params", "opt_state", "step", "rng"} (sharded arrays; every
  process writes its shards);
- `data`: the grain iterator state (JSON);
- `meta`: JSON facts about the step (loss, wall time).

Orbax writes a checkpoint into a temporary folder and renames it to `<step>` only when every
item is complete, so a run killed mid-save leaves no `<step>` folder and a half-written
checkpoint is never read. If the newest `<step>` still cannot be read (e.g. a disk error
corrupted it), `restore_latest` warns, moves it to `checkpoints/unreadable/<step>-<n>` and falls
back to the one before.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older one is used instead."""


class Checkpointer:
    """Save and restore train states under `directory` (one sub-folder per step).

    Args:
      directory: the checkpoints folder (created if missing).
      keep: how many of the newest checkpoints to keep.
      async_save: write in a background thread (`wait()` blocks until written).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            save_interval_steps=1)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest complete checkpoint step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def path(self, step: int) -> pathlib.Path:
        """Folder of checkpoint `step`."""
        return self.directory / str(step)

    def save(self, step: int, state: Any, data_state: dict, meta: dict | None = None,
             wait: bool = False) -> None:
        """Save `state` (pytree of arrays), `data_state` and `meta` (JSON dicts) as `step`.

        Returns once the arrays are copied off the device (async) or written (`wait=True`).
        Re-saving an existing step is a no-op.
        """
        if step in self.manager.all_steps():
            if wait:
                self.wait()
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            meta=ocp.args.JsonSave(dict(meta or {}))), force=True)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restore checkpoint `step` into the shapes, dtypes and shardings of `abstract_state`
        (a pytree of jax.ShapeDtypeStruct). Returns (state, data_state, meta)."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out.state, dict(out.data or {}), dict(out.meta or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Restore the newest readable checkpoint: (step, state, data_state, meta), or None if
        there is none. Unreadable newer checkpoints are warned about (CheckpointWarning) and
        moved to `unreadable/`."""
        bad: list[int] = []
        result = None
        for step in reversed(self.all_steps()):
            try:
                state, data_state, meta = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any read failure: try the older one
                bad.append(step)
                older = [s for s in self.all_steps() if s < step]
                warnings.warn(
                    f"checkpoint {self.path(step)} cannot be read ({type(e).__name__}: "
                    f"{str(e)[:300]}); falling back to "
                    f"{'step ' + str(older[-1]) if older else 'a fresh start'}",
                    CheckpointWarning, stacklevel=2)
                continue
            result = (step, state, data_state, meta)
            break
        if bad:
            self._quarantine(bad)
        return result

    def _quarantine(self, steps: list[int]) -> None:
        from jax.experimental import multihost_utils
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("chunkwise_quarantine_before")
        if jax.process_index() == 0:
            target = self.directory / "unreadable"
            target.mkdir(exist_ok=True)
            for step in steps:
                n = 0
                while (target / f"{step}-{n}").exists():
                    n += 1
                shutil.move(str(self.path(step)), str(target / f"{step}-{n}"))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("chunkwise_quarantine_after")
        self.manager.reload()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
