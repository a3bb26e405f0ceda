"""Training: encoders into run directories, grids of runs, and ensembles of trained runs.

loop        training one encoder from the feature cache into a run directory (DDP, resume)
claiming    claiming a run directory for a training job: one writer, restartable, nothing half-written
grid        several subjects, backbone layers and seeds from one tbe train command
ensembling  combining trained runs into an ensemble directory (tbe ensemble)

This package exports what the rest of the suite uses; the parts are imported
from their modules.
"""
from .ensembling import make_ensemble
from .grid import grid_members, int_list, train_grid
from .loop import train

__all__ = ["grid_members", "int_list", "make_ensemble", "train", "train_grid"]
