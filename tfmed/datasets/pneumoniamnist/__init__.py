"""PneumoniaMNIST (MedMNIST v2, CC BY 4.0): ``pneumoniamnist_trainval.npz`` holds the official train and
validation splits; README.md here gives their source, attribution and published baselines."""
