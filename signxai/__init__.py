"""signxai: explain PyTorch models with LRP and SIGN methods, with proven iNNvestigate parity."""

__version__ = "0.1.0"
