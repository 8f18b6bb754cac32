"""Training-dynamics monitoring: metrics files, wandb, console tables, reflection rates, plots."""
