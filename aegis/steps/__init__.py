"""Step types: what one step of a workflow does, and the registry that names them."""
