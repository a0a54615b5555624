"""The local stack: real Kafka, Redis and Temporal processes for development and tests."""

from consumers.stack.errors import StackError
from consumers.stack.manager import LocalStack
from consumers.stack.service import ServiceStatus

__all__ = ["LocalStack", "ServiceStatus", "StackError"]
