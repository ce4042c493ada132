"""HTTP plumbing shared by the three APIs: errors, limits, request fields, the app factory."""
