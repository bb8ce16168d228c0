"""``python -m services.monitor``: the monitor alone in this process."""

from services.monitor.app import service
from skyport.runtime import run_service

run_service(service)
