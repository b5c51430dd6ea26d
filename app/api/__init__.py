"""HTTP layer: routes (one module per resource), shared dependencies, problem+json errors."""
