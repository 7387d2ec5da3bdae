"""Delivery to clients: the webhook outbox, signed delivery with retries, the delivery log."""
