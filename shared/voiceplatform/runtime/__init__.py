"""Service runtime: owned tasks, the service runner (bus, health, metrics, SIGTERM drain)."""

from voiceplatform.runtime.service import Service, run_event_loop, run_service, service_main
from voiceplatform.runtime.tasks import TaskRegistry, cancel_and_wait

__all__ = ["Service", "TaskRegistry", "cancel_and_wait", "run_event_loop", "run_service", "service_main"]
