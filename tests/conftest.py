import torch

# Two cores: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, torch.get_num_threads()))
