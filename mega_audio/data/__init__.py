"""The data stages: audio files -> manifest (recipes) -> tokenize (codecs) -> token store -> training batches."""
