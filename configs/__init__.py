"""Training configs (ml_collections): `python train.py --config configs/<name>.py`."""
