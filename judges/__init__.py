"""mmrm.judges."""
