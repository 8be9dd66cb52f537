"""u2serve server side: the U²-Net models, their weights, engines, codecs and the TorchServe handler."""
