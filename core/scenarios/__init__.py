"""Built-in scenarios (TOML files), loaded with mmugather.core.scenario.load_builtin()."""
