"""Deliberately broken variants, one module each, kept apart from the correct
code they override (registered in :data:`mmugather.core.mutants.MUTANTS`)."""
