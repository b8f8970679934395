"""The analytic memory model (torch-free): quantized weights, optimizer state, the base's and
the adapter's tensors, activations per layer kind, the caching allocator, the training stacks'
behaviours, sharding over GPUs, and the shipped calibration (:mod:`.calibrated`)."""
