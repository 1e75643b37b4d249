"""GeoFM-Scale: MAE ViT pretraining on satellite imagery, from 86M to 15B parameters."""
__version__ = "0.1.0"
