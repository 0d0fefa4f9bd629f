"""What writes run folders: the plan, the grid, a cell's phases, attacks, executors, sweeps, tuning, regression."""
