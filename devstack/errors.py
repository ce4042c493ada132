class StackError(RuntimeError):
    """A piece of the stack cannot start; the message names it and what to do."""
