"""core: what training, prediction, evaluation and serving all use (preprocessing, target
channels, the scale policy, the model folder and its network, the device)."""
