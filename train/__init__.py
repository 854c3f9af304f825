"""mmrm.train."""
