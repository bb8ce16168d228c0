"""``python -m services.notifier``: the notifier alone in this process."""

from services.notifier.app import service
from skyport.runtime import run_service

run_service(service)
