"""zfjax: Zeiler & Fergus (ECCV 2014) in JAX: ZFNet, the deconvnet and the paper's analyses."""

__version__ = '0.1.0'
