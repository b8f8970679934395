"""What a model is: architecture cards derived from transformers (:mod:`.card`, torch-free) and
the derivation itself (:mod:`.derive`, torch)."""
