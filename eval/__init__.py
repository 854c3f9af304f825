"""mmrm.eval."""
