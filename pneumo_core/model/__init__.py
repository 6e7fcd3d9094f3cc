"""The network and everything done with it: training, metrics, calibration, prediction, explanation."""
