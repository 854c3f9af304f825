"""mmrm.rm."""
