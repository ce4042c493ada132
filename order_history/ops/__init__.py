"""The operator commands of `order-history` (status, reconcile, rebuild, dlq, orphans, explain, ...)
and the divergence sampler that runs beside the consumer.
"""
