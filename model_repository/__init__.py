"""Triton model templates (config.pbtxt + 1/model.py), shipped with the package;
`t2vserve repo build` renders them for a profile."""
