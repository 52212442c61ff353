"""Built-in methods, one module each; fedsub.core.registry.BUILTIN names them, and importing a
module registers it (the registry imports only the methods a run uses)."""
