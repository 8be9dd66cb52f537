"""u2serve server side: the U²-Net models, their weights, image transforms and the TorchServe handler."""
