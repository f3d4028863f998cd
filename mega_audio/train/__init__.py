"""Training and using models: the shared loop pieces, pre-training, fine-tuning, inference, metrics and reports."""
