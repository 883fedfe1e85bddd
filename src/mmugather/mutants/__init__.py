"""Mutants apart from the correct code: each module overrides one step of
one arch's behaviour and says what that breaks.  The registry that makes
them selectable by name is ``mmugather.core.mutants.MUTANTS``.
"""
