"""The invariant checker: watches the event stream and reports what broke.

:class:`Checker` is an event observer; :data:`RULES` names every rule
(``rules.py``); the rules that ask what the hardware can still reach are in
``reach.py``, what a teardown must leave behind in ``complete.py``,
reports in ``report.py``.
"""

from mmugather.core.check.checker import Checker
from mmugather.core.check.report import TRAIL, Violation
from mmugather.core.check.rules import (
    COMMON_RULES,
    COMPLETENESS_RULES,
    HARDWARE_RULES,
    REPLAY_RULES,
    RULES,
)

__all__ = ["COMMON_RULES", "COMPLETENESS_RULES", "HARDWARE_RULES", "REPLAY_RULES", "RULES",
           "TRAIL", "Checker", "Violation"]
