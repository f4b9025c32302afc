"""Code generation: integer IR -> C project (templates, weight layouts, fit estimates)."""
