"""One image through the model: the protocol config, crops, sliding windows, the Segmenter
and ``explain``. Everything after per-class scores at the image size lives in ``runs``."""
