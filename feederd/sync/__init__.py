"""feeder-sync: the laptop side that pulls mined samples, retrains and pushes models.

Nothing here is imported by the daemon; these modules may use the ``[sync]`` extras
(``onnx``, scikit-learn, matplotlib).
"""
