"""Local checkpoint IO: diffusers folders and single-file LDM checkpoints; never a hub lookup."""

from .loader import Components, file_hash, load_components
from .save import save_diffusers_folder, save_single_file

__all__ = ["Components", "file_hash", "load_components", "save_diffusers_folder", "save_single_file"]
