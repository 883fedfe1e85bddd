"""The checker's page-table rules: a table unhooked, then flushed out of
the walk caches, then (on RCU arches) past a grace period or a
synchronising IPI, and only then freed, once.

A mixin of :class:`~mmugather.core.check.checker.Checker`, which holds the
state (``docs/checker.md`` lists the rules).  With a hardware model
(``hw_config``) the reachability rules judge instead
(:class:`~mmugather.core.check.reach.HardwareRules`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmugather.core.check.reach import HardwareRules


class TableRules:
    """``table_unhook``, ``rcu_queue``, ``rcu_grace_period``, ``ipi_sync``,
    ``table_free``."""

    # The checker's state these rules read and change (set in its __init__).
    seq: int
    saw_callers: bool
    rcu_tables: bool
    hw: HardwareRules | None
    #: table -> unhooked|flushed|rcu|rcu-done|ipi
    tables: dict[int, str]
    table_level: dict[int, str]
    table_addr: dict[int, int]

    if TYPE_CHECKING:
        def violate(self, rule: str, message: str, page: int | None = None) -> None: ...

    def _table_unhook(self, ev: dict[str, Any]) -> None:
        self.saw_callers = True
        table = ev["table"]
        self.tables[table] = "unhooked"
        self.table_level[table] = ev.get("level", "")
        if self.hw is not None:
            self.hw.tlb.table_unhooked(table, ev["level"], ev["addr"], self.seq)
            self.table_addr[table] = ev["addr"]

    def _rcu_queue(self, ev: dict[str, Any]) -> None:
        if self.hw is not None:
            # Walk caches are judged now (the free may follow at once);
            # lockless walkers when the table is freed.
            for table in ev["tables"]:
                self.hw.table_queued(table, self.table_level.get(table, ""))
            return
        for table in ev["tables"]:
            state = self.tables.get(table)
            if state == "unhooked":
                self.violate(
                    "table-free-walkers",
                    f"table {table:#x} is handed to RCU before the TLB flush that drops "
                    "hardware walkers' cached copies of it",
                )
            if state is not None:
                self.tables[table] = "rcu"

    def _rcu_grace_period(self, ev: dict[str, Any]) -> None:
        self._walkers_synced("rcu", "rcu-done")

    def _ipi_sync(self, ev: dict[str, Any]) -> None:
        self._walkers_synced("flushed", "ipi")

    def _walkers_synced(self, waiting: str, done: str) -> None:
        """No walker is still inside a table: those in state ``waiting``
        move on to ``done``."""
        if self.hw is not None:
            self.hw.tlb.walkers_synced()
        for table, state in self.tables.items():
            if state == waiting:
                self.tables[table] = done

    def _table_free(self, ev: dict[str, Any]) -> None:
        for table in ev["tables"]:
            self._table_freed(table)

    def _table_freed(self, table: int) -> None:
        state = self.tables.pop(table, None)
        if state is None:
            if self.saw_callers:
                self.violate("free-once", f"table {table:#x} is freed but was never unhooked")
            return
        if self.hw is not None:
            self.hw.table_freed(table, self.table_level.get(table, ""),
                                self.table_addr.pop(table, None))
            return
        ok = state in ("rcu-done", "ipi") if self.rcu_tables else state != "unhooked"
        if not ok:
            need = (
                "an RCU grace period (or a synchronising IPI)"
                if self.rcu_tables
                else "a TLB flush, whose IPI waits for lockless walkers"
            )
            self.violate(
                "table-free-walkers",
                f"{self.table_level.get(table, 'page')} table {table:#x} is freed while "
                f"{state}, before {need}",
            )
