"""Test-wide settings: CPU, no preallocation, quiet logs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Pallas interpret mode runs kernel bodies in host callbacks that dispatch jax ops themselves;
# with asynchronous CPU dispatch these can wait on each other. Tests run synchronously.
import jax  # noqa: E402

jax.config.update("jax_cpu_enable_async_dispatch", False)
