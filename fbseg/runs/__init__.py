"""Many images: finding inputs, naming and writing outputs, the reader/model/writer stream,
folder runs with resume and summaries, and torchrun ranks. Engine-agnostic: it sees only
``SegmentationResult``s."""
