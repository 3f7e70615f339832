"""Data sets shipped inside tfmed as package data, each in a folder with its README and licence: the
official PneumoniaMNIST train and validation splits (:mod:`tfmed.datasets.pneumoniamnist`), which
:mod:`tfmed.data.sources.embedded` reads."""
