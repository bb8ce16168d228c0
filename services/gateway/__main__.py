"""``python -m services.gateway``: the gateway alone in this process."""

from services.gateway.app import service
from skyport.runtime import run_service

run_service(service)
