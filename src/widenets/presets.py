"""Problem sizes that grow with the machine.

Three presets:

* ``ci``  -- 2 CPU cores in continuous integration: every chapter in well under two minutes;
* ``cpu`` -- a laptop: bigger, smoother figures in minutes (the default of ``make book``);
* ``gpu`` -- a Colab GPU: the papers' sizes.

The active preset is, in order: the environment variable ``WIDENETS_PRESET`` if set,
``ci`` when ``CI=true``, ``gpu`` when JAX's default backend is a GPU or TPU, else ``cpu``.
Chapters state their sizes next to the experiment with :func:`pick`::

    widths = wn.presets.pick(ci=[64, 256, 1024], cpu=[64, 256, 1024, 4096], gpu=[...])
"""
from __future__ import annotations

import os

PRESETS = ("ci", "cpu", "gpu")


def name() -> str:
    """The active preset: ``"ci"``, ``"cpu"`` or ``"gpu"`` (see the module docstring)."""
    chosen = os.environ.get("WIDENETS_PRESET", "").strip().lower()
    if chosen:
        if chosen not in PRESETS:
            raise ValueError(
                f"WIDENETS_PRESET must be one of {PRESETS}; got {chosen!r}")
        return chosen
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return "ci"
    import jax
    return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


def pick(*, ci, cpu, gpu=None, preset: str | None = None):
    """Return the value for the active preset (``gpu`` falls back to ``cpu`` if omitted)."""
    preset = name() if preset is None else preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}")
    return {"ci": ci, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[preset]


def banner() -> str:
    """One line for the top of every chapter: preset, JAX version and device."""
    import jax
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return (f"widenets preset: {name()!r} | JAX {jax.__version__} on "
            f"{dev.platform.upper()} ({kind}), {len(jax.devices())} device(s) | "
            f"float64 {'on' if jax.config.jax_enable_x64 else 'off'}")
