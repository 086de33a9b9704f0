"""The encoders: one file per architecture, the packed batches they run on, and the Encoder that serves them."""
