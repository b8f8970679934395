"""Fitting and checking against reality: the calibration fit from measurements and GPU
profiles, and validation against published measurements (the shipped result is data in
:mod:`lorasize.memory.calibrated`)."""
