"""Reading run directories: per-run tables and plots (report), grids of runs (cells, results,
grid_plots), TensorBoard events (tblog)."""
