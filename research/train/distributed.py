"""Multi-host start-up through `jax.distributed.initialize`.

The coordinator address, process count and process id come from arguments (the CLI's
`--coordinator-address`, `--num-processes`, `--process-id`) or the standard environment variables
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. On managed clusters (Cloud TPU
pods, SLURM, Open MPI, Kubernetes) `auto=True` (`--distributed`) lets JAX detect them itself.
Without any of these, a run is single-process and nothing is initialised.
"""

from __future__ import annotations

import os

import jax


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               local_device_ids: list[int] | None = None) -> bool:
    """Call `jax.distributed.initialize` when a multi-process launch is requested.

    Returns True if it was called (now or earlier), False for a single-process run. Must run
    before anything touches a JAX device.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if jax.distributed.is_initialized():
        return True
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not explicit and not auto:
        return False
    if explicit:
        missing = [n for n, v in (("coordinator_address", coordinator_address),
                                  ("num_processes", num_processes),
                                  ("process_id", process_id)) if v is None]
        if missing:
            raise ValueError(
                f"a multi-process run needs coordinator_address, num_processes and process_id "
                f"(flags or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); "
                f"missing: {missing}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, num_processes={num_processes}), got "
                             f"{process_id}")
    if _cpu_only():
        # CPU collectives across processes (tests, laptops): gloo over TCP.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
    return True


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.strip().lower() == "cpu"
