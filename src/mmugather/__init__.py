"""mmugather: an executable, pluggable model of the Linux kernel's mmu_gather.

* :mod:`mmugather.core` - the engine, hookspecs, events, replay.
* :mod:`mmugather.arches` - the built-in arch configurations.
* :mod:`mmugather.plugins` - feature plugins (what Kconfig selects).
"""

__version__ = "0.1.0"
