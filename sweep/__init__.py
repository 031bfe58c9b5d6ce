"""sweep: plan, run, watch and aggregate grids of kd jobs (locally or on SLURM)."""
