"""The CPUs of a modelled machine and what each one does with the mm.

A teardown runs on one CPU (the *zapping* CPU, 0).  While the mm has users,
other threads of the process run on other CPUs and go on loading and storing
through whatever their TLBs still hold.  A CPU may also hold the mm *lazily*
(x86's lazy TLB: a kernel thread borrowed the mm's page tables and makes no
user access, though the hardware may still walk those tables
speculatively).  When the last user goes (``exit_mmap()``), nobody runs user
code in the mm any more; the CPUs that ran it keep it loaded lazily until
they switch.

Sets of CPUs are bit masks (bit N: CPU N), as ``struct cpumask`` is.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

#: The CPU that runs the teardown.
ZAPPING_CPU = 0


def mask_of(cpus: Iterable[int]) -> int:
    mask = 0
    for cpu in cpus:
        mask |= 1 << cpu
    return mask


def cpus_of(mask: int) -> list[int]:
    """The CPUs of ``mask``, lowest first."""
    out = []
    cpu = 0
    while mask:
        if mask & 1:
            out.append(cpu)
        mask >>= 1
        cpu += 1
    return out


def describe(mask: int) -> str:
    """``CPU 1``, ``CPUs 0,1`` or ``no CPU``, for reports."""
    cpus = cpus_of(mask)
    if not cpus:
        return "no CPU"
    if len(cpus) == 1:
        return f"CPU {cpus[0]}"
    return "CPUs " + ",".join(str(c) for c in cpus)


def _check_cpus(instance: CpuConfig, attribute: attrs.Attribute[tuple[int, ...]],
                value: tuple[int, ...]) -> None:
    for cpu in value:
        if not 0 <= cpu < instance.nr_cpus:
            raise ValueError(f"{attribute.name}: CPU {cpu} is not one of 0..{instance.nr_cpus - 1}")


@attrs.frozen(slots=True)
class CpuConfig:
    """Who runs the mm when a teardown starts.

    ``threads``: CPUs running threads of the process (the zapping CPU 0
    among them: it is one of those threads, in a system call).  ``lazy``:
    CPUs holding the mm lazily.  A CPU is in at most one of the two.
    """

    nr_cpus: int = 2
    threads: tuple[int, ...] = attrs.field(default=(0, 1), validator=_check_cpus)
    lazy: tuple[int, ...] = attrs.field(default=(), validator=_check_cpus)
    #: the mm's ASID (PCID on x86, PID on powerpc): the tag its entries carry
    asid: int = 1

    def __attrs_post_init__(self) -> None:
        if self.nr_cpus < 1:
            raise ValueError("nr_cpus must be at least 1")
        if ZAPPING_CPU not in self.threads:
            raise ValueError(f"threads: CPU {ZAPPING_CPU} runs the teardown, so it runs a thread")
        both = set(self.threads) & set(self.lazy)
        if both:
            raise ValueError(f"CPU {min(both)} cannot both run a thread and hold the mm lazily")

    @property
    def running(self) -> int:
        return mask_of(self.threads)

    @property
    def lazy_mask(self) -> int:
        return mask_of(self.lazy)

    @property
    def all_cpus(self) -> int:
        return (1 << self.nr_cpus) - 1

    def for_arch(self, nr_cpus: int | None) -> CpuConfig:
        """This configuration on an arch with at most ``nr_cpus`` CPUs (1 for
        !CONFIG_SMP): CPUs it lacks drop out."""
        if nr_cpus is None or nr_cpus >= self.nr_cpus:
            return self
        return CpuConfig(
            nr_cpus=nr_cpus,
            threads=tuple(c for c in self.threads if c < nr_cpus),
            lazy=tuple(c for c in self.lazy if c < nr_cpus),
            asid=self.asid,
        )


#: Two CPUs, a thread of the process on each: the smallest machine on which a
#: stale TLB entry can be used while the other CPU tears down.
DEFAULT_CPUS = CpuConfig()
