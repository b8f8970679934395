"""What a model and its adapters are: the hand-written families (:mod:`.model`,
:mod:`.layout`), architecture cards derived from transformers (:mod:`.card`, torch-free;
:mod:`.derive`, torch), PEFT's targets (:mod:`.lora`), the catalogs, resolving what the user
typed, and the safetensors file format."""
