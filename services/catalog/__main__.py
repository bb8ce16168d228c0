"""``python -m services.catalog``: the catalog alone in this process."""

from services.catalog.app import service
from skyport.runtime import run_service

run_service(service)
