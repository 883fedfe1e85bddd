"""``mmugather host-check``: the running kernel's own TLB flushes for a few
small workloads, next to what the ``x86-64`` model flushes for the same
layouts (``docs/hardware.md``, "Checking the model against the host").

:mod:`.workloads` says what runs, :mod:`.tracer` records it through tracefs
(with :mod:`.child`, the workload process), :mod:`.model` runs the same
layouts on the model and compares.
"""
