"""Plain data and files: errors, paths, concept sets, the protocol, run records, the guarded image reader."""
