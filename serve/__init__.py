"""mmrm.serve."""
