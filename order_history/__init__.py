"""The read side: consumes order and goods events into a joined read model and serves it."""
