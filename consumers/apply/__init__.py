"""The apply consumer: memory events from Kafka into Redis, exactly-once in effect.

One job per module: ``consumer`` runs the loop (fetch, hand over, commit, rebalance);
``decoding`` turns records into per-memory work (the home rule, dead letters found on the
way); ``outputs`` collects what a batch sends (dead letters, flush commands), sent before its
commit; ``accounting`` turns write outcomes into the batch report, spans and metrics.
"""

from consumers.apply.accounting import BatchReport
from consumers.apply.consumer import ApplyConsumer

__all__ = ["ApplyConsumer", "BatchReport"]
