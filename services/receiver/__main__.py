"""``python -m services.receiver``: the receiver alone in this process."""

from services.receiver.app import service
from skyport.runtime import run_service

run_service(service)
