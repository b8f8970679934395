"""Planning on top of the estimate: the largest setting that fits (solve), sweeps, and the HTML
capacity report."""
